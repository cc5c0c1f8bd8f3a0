"""Checkpoints: round trips (sync and async), dedup of unchanged shards, per-tensor checks on
load, device maps, resume from the latest."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from datastore.errors import Corrupt, InvalidInput  # noqa: E402
from registry import Registry  # noqa: E402
from registry import checkpoints as ck  # noqa: E402


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(str(tmp_path / "r.db"), str(tmp_path / "blobs"))


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(64, 32, generator=g),
        "layer.0.w": torch.randn(32, 32, generator=g).to(torch.bfloat16),
        "layer.1.w": torch.randn(32, 32, generator=g),
        "step_count": torch.tensor([7], dtype=torch.int64),
    }


def test_round_trip_dedup_and_resume(reg: Registry) -> None:
    state = _state()
    v1 = ck.save(reg, state, "runs/a", step=100, shard_bytes=8 * 1024)
    assert len([f for f in v1.files if f.path.endswith(".safetensors")]) > 1
    back = ck.load(reg, "runs/a:1")
    assert set(back) == set(state)
    for name, t in state.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t)
    uploaded_before = {b.key for b in reg.blobs.list()}
    state["layer.1.w"] += 1  # one tensor changes
    v2 = ck.save(reg, state, "runs/a", step=200, shard_bytes=8 * 1024)
    new = {b.key for b in reg.blobs.list()} - uploaded_before
    shards = {f.sha256 for f in v2.files} - {f.sha256 for f in v1.files}
    assert len(new) == len(shards) == 2, "only the changed shard and the manifest are new"
    last = ck.latest(reg, "runs/a")
    assert last is not None and last.number == 2 and last.metadata["step"] == 200
    assert ck.latest(reg, "runs/none") is None
    assert torch.equal(ck.load(reg, "runs/a")["layer.1.w"], state["layer.1.w"])


def test_async_save_returns_before_the_upload_and_surfaces_failures(reg: Registry) -> None:
    state = _state(1)
    start = time.perf_counter()
    handle = ck.save_async(reg, state, "runs/b", step=1)
    returned = time.perf_counter() - start
    state["embed.weight"].zero_()  # the training loop goes on: the saved copy is unaffected
    version = handle.wait(60)
    assert handle.done() and version.metadata["step"] == 1
    assert not torch.equal(ck.load(reg, "runs/b:1")["embed.weight"], state["embed.weight"])
    assert returned < 5
    bad = ck.save_async(reg, state, "../bad", step=2)
    with pytest.raises(InvalidInput):
        bad.wait(60)


def test_a_substituted_tensor_is_caught_per_tensor(reg: Registry, tmp_path: Path) -> None:
    """A checkpoint whose shard holds other values than its manifest lists (re-registered by
    hand, so every blob is intact): caught by the per-tensor check, naming the tensor."""
    from safetensors.torch import load_file, save_file

    ck.save(reg, _state(2), "runs/c", shard_bytes=1 << 30)
    copy = reg.download("runs/c:1", tmp_path / "copy")
    shard = next(copy.glob("*.safetensors"))
    tensors = load_file(str(shard))
    tensors["layer.1.w"] = tensors["layer.1.w"] * 2
    save_file(tensors, str(shard))
    reg.register("runs/c", [copy], kind="checkpoint")
    with pytest.raises(Corrupt, match=r"tensor 'layer\.1\.w'"):
        ck.load(reg, "runs/c:2")
    blob = Path(reg.blob_location) / reg.blobs.key(reg.resolve("runs/c:1").files[-1].sha256)
    blob.write_bytes(b"garbage")
    with pytest.raises(Corrupt):  # a damaged blob fails its own checksum on download
        ck.load(reg, "runs/c:1")


def test_device_map_and_bad_state(reg: Registry) -> None:
    ck.save(reg, _state(3), "runs/d")
    out = ck.load(reg, "runs/d", device={"layer.": "cpu", "": "cpu"})
    assert all(t.device.type == "cpu" for t in out.values())
    with pytest.raises(InvalidInput, match="not a tensor"):
        ck.save(reg, {"lr": 0.1}, "runs/d")


def test_dcp_checkpoints_round_trip_through_the_registry(reg: Registry, tmp_path: Path) -> None:
    state = {"model": {k: v.clone() for k, v in _state(4).items()}}
    v = ck.dcp_save(reg, state, "runs/dcp", staging=str(tmp_path / "stage"), step=5)
    assert v is not None and any(f.path == ".metadata" for f in v.files)
    target = {"model": {k: torch.zeros_like(t) for k, t in state["model"].items()}}
    ck.dcp_load(reg, target, "runs/dcp:1", staging=str(tmp_path / "back"))
    for k, t in state["model"].items():
        assert torch.equal(target["model"][k], t)


def test_async_saves_register_in_order_and_resume_skips_revoked(reg: Registry) -> None:
    handles = [ck.save_async(reg, _state(s), "runs/e", step=s * 10) for s in (1, 2, 3)]
    numbers = [h.wait(60).number for h in handles]
    assert numbers == [1, 2, 3], "saves register in the order they were asked for"
    reg.revoke("runs/e:3", "diverged")
    resume = ck.latest(reg, "runs/e")
    assert resume is not None and resume.number == 2 and resume.metadata["step"] == 20
    with pytest.raises(InvalidInput, match="unknown arguments: setp"):
        ck.save_async(reg, _state(), "runs/e", setp=1)


def _odd_state() -> dict[str, torch.Tensor]:
    """Every layout corner: mixed widths (alignment), bool, 0-dim and empty tensors."""
    g = torch.Generator().manual_seed(5)
    return {
        "a.half": torch.randn(3, 5, generator=g).to(torch.float16),
        "b.flag": torch.tensor([True, False, True]),
        "c.scalar": torch.tensor(3.5, dtype=torch.float64),
        "d.empty": torch.empty(0, 4),
        "e.int8": torch.arange(-7, 6, dtype=torch.int8),
        "f.long": torch.arange(5, dtype=torch.int64),
    }


def test_checkpoints_on_every_backend_are_plain_safetensors(
    root_uri: str, storage: object, tmp_path: Path
) -> None:
    """Local and S3 blob stores: the round trip keeps every dtype and shape, the shards are
    files safetensors itself reads, an unchanged shard is not stored again, and a damaged blob
    is refused."""
    from safetensors.torch import load_file

    reg = Registry(str(tmp_path / "r.db"), root_uri, config=storage)  # type: ignore[arg-type]
    state = {**_odd_state(), **_state(6)}
    v1 = ck.save(reg, state, "runs/s", step=1, shard_bytes=4096)
    back = ck.load(reg, "runs/s:1")
    for name, t in state.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape, name
        assert torch.equal(back[name], t), name
    files = reg.download("runs/s:1", tmp_path / "plain")
    seen: dict[str, torch.Tensor] = {}
    for shard in files.glob("*.safetensors"):
        seen.update(load_file(str(shard)))
    assert set(seen) == set(state) and all(torch.equal(seen[n], state[n]) for n in state)
    before = {b.key for b in reg.blobs.list()}
    state["embed.weight"][0, 0] += 1
    v2 = ck.save(reg, state, "runs/s", step=2, shard_bytes=4096)
    new = {b.key for b in reg.blobs.list()} - before
    assert len(new) == 2, "the changed shard and the manifest"
    assert len({f.sha256 for f in v2.files} & {f.sha256 for f in v1.files}) == len(v1.files) - 2
    assert torch.equal(ck.load(reg, "runs/s:2")["embed.weight"], state["embed.weight"])
    shard = next(f for f in v2.files if f.path.endswith(".safetensors"))
    data = bytearray(reg.blobs.store.get(reg.blobs.key(shard.sha256)))
    data[-1] ^= 0xFF  # same size, one bit of the last tensor flipped
    reg.blobs.store.put(reg.blobs.key(shard.sha256), bytes(data))
    with pytest.raises(Corrupt):
        ck.load(reg, "runs/s:2")


def test_failed_saves_leave_no_staged_files_and_gc_sweeps_crashed_ones(
    reg: Registry, tmp_path: Path
) -> None:
    staging = Path(reg.blob_location) / "staging"
    ck.save(reg, _state(), "runs/f")
    with pytest.raises(InvalidInput, match="bad kind"):
        ck.save(reg, _state(7), "runs/f", kind="bad kind")  # refused after staging
    assert list(staging.glob("*")) == [], "a refused save cleans its staged shards"
    crashed = staging / "shardyard-stage-dead"  # what a writer killed mid-shard leaves
    crashed.write_bytes(b"x" * 100)
    assert reg.gc(grace=3600).staging_removed == 0, "young: maybe a writer at work"
    os.utime(crashed, (time.time() - 7200, time.time() - 7200))
    assert reg.gc(grace=3600).staging_removed == 1 and not crashed.exists()


def test_unsupported_dtypes_and_foreign_manifests_are_refused(reg: Registry) -> None:
    with pytest.raises(InvalidInput, match="complex64"):
        ck.save(reg, {"z": torch.zeros(2, dtype=torch.complex64)}, "runs/x")
    reg.register("runs/x", staged=[], paths=[], kind="checkpoint", dataset=("file:///d", 1))
    with pytest.raises(InvalidInput, match="not a checkpoint"):
        ck.load(reg, "runs/x:1")


def test_async_snapshots_reuse_a_finished_saves_buffer(reg: Registry) -> None:
    """The second save_async copies into the first one's buffer once that save is stored:
    both versions keep their own values."""
    first = _state(8)
    h1 = ck.save_async(reg, first, "runs/g", step=1)
    v1 = h1.wait(60)
    arena = ck._ARENAS[reg][-1]
    second = {k: v + 1 if v.is_floating_point() else v for k, v in first.items()}
    h2 = ck.save_async(reg, second, "runs/g", step=2)
    assert all(a is not arena for a in ck._ARENAS[reg]), "taken by save 2"
    v2 = h2.wait(60)
    back1, back2 = ck.load(reg, str(v1.ref)), ck.load(reg, str(v2.ref))
    for name in first:
        assert torch.equal(back1[name], first[name]) and torch.equal(back2[name], second[name])
