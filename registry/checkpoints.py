"""PyTorch checkpoints in the registry: safetensors shards, deduplicated, verified on load.

``save(registry, state_dict, "team/run", step=...)`` writes the tensors as safetensors shards
of at most ``shard_bytes`` (tensors in name order, so an unchanged tensor lands in a shard with
the same bytes as before), plus ``checkpoint.json`` listing every tensor's shard, dtype, shape
and sha256 of its bytes. The shards go through the registry's content-addressed blob store: a
checkpoint that changed only some tensors uploads only the shards holding them. ``load``
downloads (each blob checked against its sha256) and then checks every tensor's own sha256
before handing it out, so a corrupted or substituted shard is caught per tensor, which neither
``torch.save``, safetensors nor DCP do.

``dcp_save`` / ``dcp_load`` put ``torch.distributed.checkpoint`` checkpoints (any sharding) in
the same registry storage: DCP writes to a staging directory the ranks share, rank 0 registers
it. ``save_async`` snapshots the tensors to host memory (the only part the training loop waits
for) and serialises and uploads them on a background thread; its handle's ``wait()`` returns
the registered version or raises what went wrong.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datastore.errors import Corrupt, InvalidInput

if TYPE_CHECKING:
    import torch

    from registry.registry import Registry, Version

__all__ = ["SaveHandle", "dcp_load", "dcp_save", "latest", "load", "save", "save_async"]

MANIFEST = "checkpoint.json"
DEFAULT_SHARD_BYTES = 512 << 20


def _raw(t: torch.Tensor) -> memoryview:
    """The tensor's bytes as stored (any dtype, bfloat16 included)."""
    import torch

    flat = t.detach().contiguous().reshape(-1).view(torch.uint8)
    return flat.numpy().data


def _snapshot(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Host copies of the tensors (the caller may update them as soon as this returns)."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise InvalidInput(
                f"state_dict entry {name!r} is a {type(value).__name__}, not a tensor: keep "
                "other training state in metadata="
            )
        out[name] = value.detach().to("cpu", copy=True).contiguous()
    return out


def _write(tensors: Mapping[str, torch.Tensor], root: Path, shard_bytes: int) -> dict[str, Any]:
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    entries: dict[str, Any] = {}
    for i, group in enumerate(shards):
        file = f"shard-{i:05d}.safetensors"
        save_file(group, str(root / file))
        for name, t in group.items():
            entries[name] = {
                "shard": file,
                "dtype": str(t.dtype).removeprefix("torch."),
                "shape": list(t.shape),
                "sha256": hashlib.sha256(_raw(t)).hexdigest(),
            }
    manifest = {"format": 1, "tensors": entries, "shards": len(shards)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def save(
    registry: Registry,
    state_dict: Mapping[str, Any],
    name: str,
    *,
    step: int | None = None,
    metrics: Mapping[str, float] | None = None,
    parents: tuple[str, ...] = (),
    metadata: Mapping[str, Any] | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    kind: str = "checkpoint",
) -> Version:
    """Register ``state_dict`` as a new version of ``name``; ``step`` is kept as metadata
    (:func:`latest` resumes from the highest)."""
    return _save(
        registry, _snapshot(state_dict), name, step, metrics, parents, metadata, shard_bytes, kind
    )


def _save(
    registry: Registry,
    tensors: Mapping[str, torch.Tensor],
    name: str,
    step: int | None,
    metrics: Mapping[str, float] | None,
    parents: tuple[str, ...],
    metadata: Mapping[str, Any] | None,
    shard_bytes: int,
    kind: str,
) -> Version:
    root = Path(tempfile.mkdtemp(prefix="shardyard-ckpt-"))
    try:
        _write(tensors, root, shard_bytes)
        meta = dict(metadata or {})
        if step is not None:
            meta["step"] = int(step)
        return registry.register(
            name, [root], kind=kind, metrics=metrics, parents=parents, metadata=meta
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


class SaveHandle:
    """A checkpoint being saved in the background."""

    def __init__(self, future: Future[Version]) -> None:
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    def wait(self, timeout: float | None = None) -> Version:
        """The registered version; raises the save's error if it failed."""
        return self._future.result(timeout)


def save_async(
    registry: Registry,
    state_dict: Mapping[str, Any],
    name: str,
    **kwargs: Any,
) -> SaveHandle:
    """Like :func:`save`, but returns once the tensors are copied to host memory; the
    serialisation and upload run on a background thread."""
    unknown = set(kwargs) - {"step", "metrics", "parents", "metadata", "shard_bytes", "kind"}
    if unknown:
        raise InvalidInput(f"save_async got unknown arguments: {', '.join(sorted(unknown))}")
    tensors = _snapshot(state_dict)
    # one writer per registry object: saves register in the order they were asked for
    with _POOLS_LOCK:
        pool = _POOLS.get(id(registry))
        if pool is None:
            pool = _POOLS[id(registry)] = ThreadPoolExecutor(1, thread_name_prefix="shardyard-save")
    future = pool.submit(
        _save,
        registry,
        tensors,
        name,
        kwargs.get("step"),
        kwargs.get("metrics"),
        tuple(kwargs.get("parents", ())),
        kwargs.get("metadata"),
        int(kwargs.get("shard_bytes", DEFAULT_SHARD_BYTES)),
        kwargs.get("kind", "checkpoint"),
    )
    return SaveHandle(future)


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def load(
    registry: Registry,
    ref: str,
    *,
    device: str | Mapping[str, str] = "cpu",
    cache_dir: str | None = None,
) -> dict[str, torch.Tensor]:
    """The state dict of checkpoint ``ref``, every tensor verified against its sha256;
    ``device`` is one device, or a map from name prefix to device (longest prefix wins)."""
    from safetensors.torch import load_file

    version = registry.resolve(ref)
    root = Path(cache_dir or tempfile.mkdtemp(prefix="shardyard-load-"))
    target = root / f"{version.namespace}/{version.name}/{version.number}"
    try:
        registry.download(str(version.ref), target)
        try:
            manifest = json.loads((target / MANIFEST).read_text())
        except (FileNotFoundError, ValueError):
            raise InvalidInput(f"{version.ref} is not a checkpoint (no valid {MANIFEST})") from None
        out: dict[str, torch.Tensor] = {}
        loaded: dict[str, dict[str, torch.Tensor]] = {}
        for name, entry in sorted(manifest["tensors"].items()):
            shard = loaded.get(entry["shard"])
            if shard is None:
                shard = loaded[entry["shard"]] = load_file(str(target / entry["shard"]))
            t = shard.get(name)
            if (
                t is None
                or str(t.dtype).removeprefix("torch.") != entry["dtype"]
                or list(t.shape) != entry["shape"]
                or hashlib.sha256(_raw(t)).hexdigest() != entry["sha256"]
            ):
                raise Corrupt(
                    f"{version.ref}: tensor {name!r} in {entry['shard']} does not match its "
                    "dtype, shape or sha256 (corrupted or substituted shard)"
                )
            out[name] = t.to(_device_for(name, device))
        return out
    finally:
        if cache_dir is None:
            shutil.rmtree(root, ignore_errors=True)


def _device_for(name: str, device: str | Mapping[str, str]) -> str:
    if isinstance(device, str):
        return device
    best = max((p for p in device if name.startswith(p)), key=len, default=None)
    return device[best] if best is not None else "cpu"


def latest(registry: Registry, name: str) -> Version | None:
    """The checkpoint of run ``name`` to resume from: the highest ``step`` among versions not
    revoked (the newest version when none has a step), or None."""
    from datastore.errors import NotFound

    try:
        versions = [v for v in registry.versions(name) if v.revoked_at is None]
    except NotFound:
        return None
    if not versions:
        return None
    return max(versions, key=lambda v: (int(v.metadata.get("step", -1)), v.number))


# -- torch.distributed.checkpoint ------------------------------------------------------------
def dcp_save(
    registry: Registry,
    state_dict: dict[str, Any],
    name: str,
    *,
    staging: str,
    step: int | None = None,
    metrics: Mapping[str, float] | None = None,
    parents: tuple[str, ...] = (),
) -> Version | None:
    """Save with ``torch.distributed.checkpoint`` (every rank writes its shards, any
    sharding DCP supports) into ``staging`` (a directory all ranks share), then register it
    from rank 0: the files go through the registry's blob store like any checkpoint. Returns
    the version on rank 0, None elsewhere."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.filesystem import FileSystemWriter
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_write

    root = Path(staging)
    dcp_write(state_dict, storage_writer=FileSystemWriter(str(root)))
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        dist.barrier()
    version = None
    if not distributed or dist.get_rank() == 0:
        meta: dict[str, Any] = {"format": "torch.distributed.checkpoint"}
        if step is not None:
            meta["step"] = int(step)
        version = registry.register(
            name, [root], kind="checkpoint", metrics=metrics, parents=parents, metadata=meta
        )
    if distributed:
        dist.barrier()
    return version


def dcp_load(
    registry: Registry, state_dict: dict[str, Any], ref: str, *, staging: str
) -> dict[str, Any]:
    """Load checkpoint ``ref`` (saved by :func:`dcp_save`) into ``state_dict`` in place,
    resharding as DCP does; each file is verified against its sha256 on download into
    ``staging``."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_read

    version = registry.resolve(ref)
    root = Path(staging)
    registry.download(str(version.ref), root)
    dcp_read(state_dict, storage_reader=FileSystemReader(str(root)))
    return state_dict
