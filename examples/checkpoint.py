"""Save a small PyTorch checkpoint into the demo registry with lineage to the token dataset it
was trained on, change one layer, save again (only the changed shard is uploaded), and load
the latest back, every tensor verified.

Run by `make demo` (SHARDYARD_HOME=.demo/home): ``python examples/checkpoint.py``.
"""

from __future__ import annotations

import torch

from registry import Registry
from registry import checkpoints as ck


def main() -> None:
    reg = Registry()
    model = torch.nn.Sequential(torch.nn.Embedding(4096, 64), torch.nn.Linear(64, 4096))
    first = ck.save(
        reg,
        model.state_dict(),
        "demo/checkpoint",
        step=100,
        parents=("demo/tokens@production",),
        metrics={"eval/loss": 3.2},
        shard_bytes=512 * 1024,
    )
    blobs_before = sum(1 for _ in reg.blobs.list())
    with torch.no_grad():
        model[1].bias += 0.01  # one tensor changes
    second = ck.save(
        reg,
        model.state_dict(),
        "demo/checkpoint",
        step=200,
        parents=("demo/tokens@production",),
        metrics={"eval/loss": 2.9},
        shard_bytes=512 * 1024,
    )
    uploaded = sum(1 for _ in reg.blobs.list()) - blobs_before
    shards = sum(1 for f in second.files if f.path.endswith(".safetensors"))
    print(f"saved {first.ref} and {second.ref}: {shards} shards, {uploaded} new blobs the 2nd time")
    resume = ck.latest(reg, "demo/checkpoint")
    assert resume is not None
    state = ck.load(reg, str(resume.ref))
    model.load_state_dict(state)
    print(
        f"resumed from {resume.ref} (step {resume.metadata['step']}), {len(state)} tensors verified"
    )
    reg.set_alias(str(second.ref), "production")


if __name__ == "__main__":
    main()
