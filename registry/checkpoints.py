"""PyTorch checkpoints in the registry: safetensors shards, deduplicated, verified on load.

``save(registry, state_dict, "team/run", step=...)`` writes the tensors as safetensors shards
of at most ``shard_bytes`` (tensors in name order), plus ``checkpoint.json`` listing every
tensor's shard, dtype, shape, byte range and xxh3-128 checksum. Every byte is read once for
checksums and written once: a shard is written straight from the tensors' memory into the blob
store's staging area while another thread computes its sha256 (its blob name) and the per-tensor
checksums, then published by rename (uploaded, for ``s3://`` blob stores). A shard whose
tensors all match the previous version's (same names, dtypes, shapes and checksums) is not
written at all: the new version points at the stored blob, so a checkpoint that changed only
some tensors stores only the shards holding them. The files are plain safetensors.

``load`` maps each shard of a local blob store copy-on-write (downloads it, checked against
its sha256, from S3), checks the header against the manifest and every tensor against its own
checksum before handing it out (reading every byte once), so a corrupted or substituted shard
is caught per tensor, which neither ``torch.save``, safetensors nor DCP do. The tensors of one
shard share its buffer (no copy).

``dcp_save`` / ``dcp_load`` put ``torch.distributed.checkpoint`` checkpoints (any sharding) in
the same registry storage: DCP writes to a staging directory the ranks share, rank 0 registers
it. ``save_async`` snapshots the tensors to host memory (the only part the training loop waits
for) and serialises and uploads them on a background thread; its handle's ``wait()`` returns
the registered version or raises what went wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from datastore.errors import Corrupt, InvalidInput, NotFound
from registry.blobs import Staged

if TYPE_CHECKING:
    import torch

    from registry.blobs import BlobStore
    from registry.registry import FileEntry, Registry, Version

__all__ = ["SaveHandle", "dcp_load", "dcp_save", "latest", "load", "save", "save_async"]

MANIFEST = "checkpoint.json"
FORMAT = 2
DEFAULT_SHARD_BYTES = 512 << 20
_STEP = 4 << 20  # bytes per write / hash update: large enough to amortise, small enough for L3

# torch dtype name -> safetensors dtype code
_CODES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
}


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _raw(t: torch.Tensor) -> memoryview:
    """The tensor's bytes as stored (any dtype, bfloat16 included)."""
    import torch

    flat = t.detach().contiguous().reshape(-1).view(torch.uint8)
    return flat.numpy().data.cast("B")


def _xxh3(view: memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(view)


def _check_entries(state_dict: Mapping[str, Any]) -> None:
    import torch

    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise InvalidInput(
                f"state_dict entry {name!r} is a {type(value).__name__}, not a tensor: keep "
                "other training state in metadata="
            )
        if _dtype_name(value) not in _CODES:
            raise InvalidInput(
                f"state_dict entry {name!r} has dtype {value.dtype}, which safetensors cannot "
                f"store (one of {', '.join(_CODES)})"
            )


def _host(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors in host memory, contiguous, copied only when they are not (a synchronous
    save holds the caller until it is done)."""
    _check_entries(state_dict)
    return {n: v.detach().to("cpu").contiguous() for n, v in state_dict.items()}


def _snapshot(
    state_dict: Mapping[str, Any], arena: torch.Tensor | None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Copies of the tensors in one host buffer (the caller may update its tensors as soon as
    this returns): ``arena``, a previous snapshot's buffer, when it is large enough, so a
    training loop that saves every N steps does not pay fresh pages (page faults cost more
    than the copy) each time. Returns (copies, the buffer)."""
    import torch

    _check_entries(state_dict)
    offsets = {}
    total = 0
    for name, value in state_dict.items():
        offsets[name] = total
        total += -(-value.numel() * value.element_size() // 64) * 64  # 64-byte aligned
    if arena is None or arena.numel() < total:
        arena = torch.empty(total, dtype=torch.uint8)
    out: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        nbytes = value.numel() * value.element_size()
        view = arena[offsets[name] : offsets[name] + nbytes].view(value.dtype).view(value.shape)
        view.copy_(value.detach())
        out[name] = view
    return out, arena


def _plan(tensors: Mapping[str, torch.Tensor], shard_bytes: int) -> list[list[str]]:
    """Tensor names per shard: name order, a new shard when the next tensor would overflow."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(tensors):
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _layout(
    tensors: Mapping[str, torch.Tensor], names: Sequence[str]
) -> tuple[bytes, dict[str, list[int]]]:
    """The safetensors header (length prefix and padding included) and each tensor's byte
    range in the data section; wider dtypes first, so every tensor is aligned in memory."""
    order = sorted(names, key=lambda n: (-tensors[n].element_size(), n))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offsets: dict[str, list[int]] = {}
    at = 0
    for name in order:
        t = tensors[name]
        end = at + t.numel() * t.element_size()
        header[name] = {
            "dtype": _CODES[_dtype_name(t)],
            "shape": list(t.shape),
            "data_offsets": [at, end],
        }
        offsets[name] = [at, end]
        at = end
    body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body, offsets


def _write_shard(
    tensors: Mapping[str, torch.Tensor],
    names: Sequence[str],
    dest: Path,
    checksums: dict[str, str],
) -> tuple[str, int, dict[str, list[int]]]:
    """Write one safetensors shard to ``dest`` (fsynced) while a second thread hashes it:
    (sha256, size, byte ranges); fills ``checksums`` for tensors not in it yet."""
    prefix, offsets = _layout(tensors, names)
    order = sorted(offsets, key=lambda n: offsets[n][0])
    views = [(name, _raw(tensors[name])) for name in order]

    def digest() -> str:
        h = hashlib.sha256(prefix)
        for name, view in views:
            x = None if name in checksums else xxhash.xxh3_128()
            for i in range(0, view.nbytes, _STEP):
                chunk = view[i : i + _STEP]
                h.update(chunk)  # hashlib and xxhash release the GIL on large buffers
                if x is not None:
                    x.update(chunk)
            if x is not None:
                checksums[name] = x.hexdigest()
        return h.hexdigest()

    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="shardyard-hash") as pool:
            hashed = pool.submit(digest)
            try:
                size = _write_all(fd, memoryview(prefix))
                for _, view in views:
                    for i in range(0, view.nbytes, _STEP):
                        size += _write_all(fd, view[i : i + _STEP])
                os.fsync(fd)
            finally:
                sha = hashed.result()
    except BaseException:
        os.close(fd)
        dest.unlink(missing_ok=True)
        raise
    os.close(fd)
    return sha, size, offsets


def _hash_shard(
    tensors: Mapping[str, torch.Tensor], names: Sequence[str], checksums: dict[str, str]
) -> Staged:
    """A shard kept in memory: hashed here, its bytes produced again when it is uploaded."""
    prefix, offsets = _layout(tensors, names)
    order = sorted(offsets, key=lambda n: offsets[n][0])
    views = [(name, _raw(tensors[name])) for name in order]
    h = hashlib.sha256(prefix)
    for name, view in views:
        x = xxhash.xxh3_128()
        for i in range(0, view.nbytes, _STEP):
            chunk = view[i : i + _STEP]
            h.update(chunk)
            x.update(chunk)
        checksums[name] = x.hexdigest()

    def produce(write: Any) -> None:
        write(memoryview(prefix))
        for _, view in views:  # read-only: the snapshot is ours, no defensive copy needed
            for i in range(0, view.nbytes, _STEP):
                write(view[i : i + _STEP].toreadonly())

    size = len(prefix) + sum(v.nbytes for _, v in views)
    return Staged("", h.hexdigest(), size, produce=produce)


def _write_all(fd: int, view: memoryview) -> int:
    n = view.nbytes
    while view.nbytes:
        view = view[os.write(fd, view) :]
    return n


def _previous(registry: Registry, name: str) -> dict[tuple[Any, ...], tuple[str, int]]:
    """Shards of the newest version of ``name`` by content: (tensor name, dtype, shape,
    checksum) of each tensor -> (sha256, size) of the blob; empty when there is none."""
    try:
        newest = registry.versions(name, limit=1)
    except NotFound:
        return {}
    if not newest or newest[0].revoked_at is not None:
        return {}
    try:
        manifest = _manifest(registry.blobs, newest[0])
    except (InvalidInput, Corrupt, NotFound):
        return {}
    if manifest.get("format") != FORMAT:
        return {}
    by_shard: dict[str, list[tuple[Any, ...]]] = {}
    for tname, e in sorted(manifest["tensors"].items()):
        by_shard.setdefault(e["shard"], []).append(
            (tname, e["dtype"], tuple(e["shape"]), e["xxh3_128"])
        )
    out = {}
    for file, key in by_shard.items():
        blob = manifest["shards"].get(file)
        if blob is not None:
            out[tuple(key)] = (blob["sha256"], int(blob["size"]))
    return out


def _write(
    registry: Registry, tensors: Mapping[str, torch.Tensor], name: str, shard_bytes: int
) -> list[Staged]:
    """Stage the shards and the manifest of a new version of ``name``."""
    previous = _previous(registry, name)
    checksums: dict[str, str] = {}
    if previous:  # checksums first: they decide which shards need writing at all
        with ThreadPoolExecutor(2, thread_name_prefix="shardyard-hash") as pool:
            names = sorted(tensors)
            sums = pool.map(lambda n: _xxh3(_raw(tensors[n])), names)
            checksums = dict(zip(names, sums, strict=True))
    staged: list[Staged] = []
    remote: list[tuple[str, list[str]]] = []
    local: list[tuple[str, list[str], Path]] = []
    entries: dict[str, Any] = {}
    shards: dict[str, Any] = {}
    try:
        plan = _plan(tensors, shard_bytes)
        for i, names in enumerate(plan):
            file = f"shard-{i:05d}.safetensors"
            key = tuple(
                (n, _dtype_name(tensors[n]), tuple(tensors[n].shape), checksums.get(n))
                for n in names
            )
            if key in previous:
                sha, size = previous[key]
                offsets = _layout(tensors, names)[1]
                staged.append(Staged(file, sha, size))
            elif not registry.blobs.is_local:  # hashed first, then sent from memory
                sha, size, offsets = "", 0, _layout(tensors, names)[1]  # filled in below
                remote.append((file, names))
                staged.append(Staged(file, sha, size))
            else:  # written below, two shards at a time
                sha, size, offsets = "", 0, _layout(tensors, names)[1]
                local.append((file, names, registry.blobs.staging_file()))
                staged.append(Staged(file, sha, size))
            shards[file] = {"sha256": sha, "size": size}
            entries.update({n: {"offsets": offsets[n]} for n in names})
        if local:  # each shard: one thread writes, another hashes; two shards keep 2 cores busy
            with ThreadPoolExecutor(2, thread_name_prefix="shardyard-shard") as pool:
                written = list(
                    pool.map(lambda job: _write_shard(tensors, job[1], job[2], checksums), local)
                )
            done_local = {
                file: Staged(file, sha, size, source=path, owned=True)
                for (file, _, path), (sha, size, _) in zip(local, written, strict=True)
            }
            staged = [done_local.get(s.path, s) for s in staged]
            for file, st in done_local.items():
                shards[file] = {"sha256": st.sha256, "size": st.size}
        if remote:  # shards hashed two at a time (both cores), uploaded by the registration
            with ThreadPoolExecutor(2, thread_name_prefix="shardyard-hash") as pool:
                hashed = list(pool.map(lambda fn: _hash_shard(tensors, fn[1], checksums), remote))
            done = {f: replace(s, path=f) for (f, _), s in zip(remote, hashed, strict=True)}
            staged = [done.get(s.path, s) for s in staged]
            for file, s in done.items():
                shards[file] = {"sha256": s.sha256, "size": s.size}
        for file, names in zip(shards, plan, strict=True):
            for n in names:
                t = tensors[n]
                entries[n] = {
                    "shard": file,
                    "dtype": _dtype_name(t),
                    "shape": list(t.shape),
                    "offsets": entries[n]["offsets"],
                    "xxh3_128": checksums[n],
                }
        doc = json.dumps(
            {"format": FORMAT, "tensors": entries, "shards": shards}, indent=1, sort_keys=True
        ).encode()
        dest = registry.blobs.staging_file()
        with open(dest, "wb") as f:
            f.write(doc)
            f.flush()
            os.fsync(f.fileno())
        staged.append(
            Staged(MANIFEST, hashlib.sha256(doc).hexdigest(), len(doc), source=dest, owned=True)
        )
    except BaseException:
        for s in staged:
            if s.source is not None:
                s.source.unlink(missing_ok=True)
        for _, _, dest in local:
            dest.unlink(missing_ok=True)
        raise
    return staged


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
        registry,
        _host(state_dict),
        name,
        step,
        metrics,
        parents,
        metadata,
        shard_bytes,
        kind,
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
    staged = _write(registry, tensors, name, shard_bytes)
    meta = dict(metadata or {})
    if step is not None:
        meta["step"] = int(step)
    try:
        return registry.register(
            name, kind=kind, metrics=metrics, parents=parents, metadata=meta, staged=staged
        )
    finally:
        for s in staged:  # consumed on success; left-overs of a failure go
            if s.source is not None:
                s.source.unlink(missing_ok=True)


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
    """Like :func:`save`, but returns once the tensors are copied to host memory (into the
    buffer of an earlier snapshot whose save has finished, when one is free); the
    serialisation and upload run on a background thread."""
    unknown = set(kwargs) - {"step", "metrics", "parents", "metadata", "shard_bytes", "kind"}
    if unknown:
        raise InvalidInput(f"save_async got unknown arguments: {', '.join(sorted(unknown))}")
    with _POOLS_LOCK:
        arenas = _ARENAS.setdefault(registry, [])
        arena = arenas.pop() if arenas else None
    try:
        tensors, arena = _snapshot(state_dict, arena)
    except BaseException:
        if arena is not None:
            _give_back(registry, arena)
        raise
    # one writer per registry object: saves register in the order they were asked for
    with _POOLS_LOCK:
        pool = _POOLS.get(registry)
        if pool is None:
            pool = _POOLS[registry] = ThreadPoolExecutor(1, thread_name_prefix="shardyard-save")

    def run(*args: Any) -> Version:
        try:
            return _save(*args)
        finally:
            _give_back(registry, arena)  # the bytes are stored (or the save failed): reusable

    future = pool.submit(
        run,
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


# Per registry object (weakly: a dropped registry frees its snapshot buffers and thread)
_POOLS: weakref.WeakKeyDictionary[Registry, ThreadPoolExecutor] = weakref.WeakKeyDictionary()
_ARENAS: weakref.WeakKeyDictionary[Registry, list[torch.Tensor]] = weakref.WeakKeyDictionary()
_POOLS_LOCK = threading.Lock()


def _give_back(registry: Registry, arena: torch.Tensor) -> None:
    with _POOLS_LOCK:
        free = _ARENAS.setdefault(registry, [])
        if len(free) < 2:  # keep at most two snapshots' memory around
            free.append(arena)


def load(
    registry: Registry,
    ref: str,
    *,
    device: str | Mapping[str, str] = "cpu",
) -> dict[str, torch.Tensor]:
    """The state dict of checkpoint ``ref``, every tensor verified against its checksum;
    ``device`` is one device, or a map from name prefix to device (longest prefix wins)."""
    version = registry.resolve(ref)
    if version.revoked_at is not None:
        raise InvalidInput(f"{version.ref} is revoked: it is kept for audit, not for use")
    manifest = _manifest(registry.blobs, version)
    if manifest.get("format") != FORMAT:
        raise InvalidInput(
            f"{version.ref}: checkpoint format {manifest.get('format')!r} is not one this "
            f"version of shardyard reads ({FORMAT})"
        )
    files = {f.path: f for f in version.files}
    by_shard: dict[str, list[str]] = {}
    for tname, entry in sorted(manifest["tensors"].items()):
        by_shard.setdefault(entry["shard"], []).append(tname)
    for file in by_shard:
        if file not in files:
            raise Corrupt(f"{version.ref}: {MANIFEST} lists shard {file}, which it does not hold")

    # A downloaded blob was checked against its sha256 whole: its tensors need no second hash.
    verify = registry.blobs.is_local

    def shard(item: tuple[str, list[str]]) -> list[tuple[str, torch.Tensor]]:
        buf = _read_blob(registry.blobs, files[item[0]])
        return _tensors(version, item[0], buf, item[1], manifest["tensors"], verify)

    out: dict[str, torch.Tensor] = {}
    # two shards at a time: reads and checksums release the GIL
    with ThreadPoolExecutor(2, thread_name_prefix="shardyard-load") as pool:
        for tensors in pool.map(shard, by_shard.items()):
            for tname, t in tensors:
                out[tname] = t.to(_device_for(tname, device))
    return out


def _manifest(blobs: BlobStore, version: Version) -> dict[str, Any]:
    entry = next((f for f in version.files if f.path == MANIFEST), None)
    if entry is None:
        raise InvalidInput(f"{version.ref} is not a checkpoint (it holds no {MANIFEST})")
    data = bytes(blobs.read(entry.sha256, entry.size))
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise Corrupt(f"{version.ref}: {MANIFEST} does not match its sha256")
    try:
        doc = json.loads(data)
    except ValueError:
        raise Corrupt(f"{version.ref}: {MANIFEST} is not JSON") from None
    if not isinstance(doc, dict):
        raise Corrupt(f"{version.ref}: {MANIFEST} is not a JSON object")
    return doc


def _read_blob(blobs: BlobStore, entry: FileEntry) -> torch.Tensor:
    """The blob's bytes as one writable uint8 tensor: a copy-on-write memory map of the file
    in a local blob store (pages are read as the checksums touch them, and shared with the
    page cache until written; blobs are immutable, and a deleted file stays readable while
    mapped), downloaded (and opened, when sealed) and checked against its sha256 otherwise."""
    import numpy as np
    import torch

    path = blobs.local_path(entry.sha256)
    if path is not None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise NotFound(
                f"blob {entry.sha256} ({entry.path}) is missing from {blobs.uri} (deleted "
                "outside the registry?)"
            ) from None
        if size == entry.size:
            if size == 0:
                return torch.empty(0, dtype=torch.uint8)
            return torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", shape=(size,)))
        # another size: sealed by a process that knew the location is encrypted, or damaged;
        # read (and open) it whole, checked against its sha256 below
    data = blobs.read(entry.sha256, entry.size)  # opened here when the store is sealed
    arr = np.frombuffer(data, dtype=np.uint8)
    if len(arr) != entry.size or hashlib.sha256(arr.data).hexdigest() != entry.sha256:
        raise Corrupt(
            f"blob {blobs.store.uri_of(blobs.key(entry.sha256))} ({entry.path}) does not "
            "match its checksum"
        )
    if isinstance(data, bytearray) or data.is_mutable:  # our own buffer: no copy
        return torch.frombuffer(data, dtype=torch.uint8)
    buf = torch.empty(entry.size, dtype=torch.uint8)
    np.copyto(buf.numpy(), arr)
    return buf


def _tensors(
    version: Version,
    file: str,
    buf: torch.Tensor,
    names: Sequence[str],
    entries: Mapping[str, Any],
    verify: bool = True,
) -> list[tuple[str, torch.Tensor]]:
    """The tensors ``names`` of shard ``file``, each checked against the header and (when
    ``verify``) its checksum; views of ``buf``."""
    import torch

    def bad(what: str) -> Corrupt:
        return Corrupt(
            f"{version.ref}: tensor {what} in {file} does not match its dtype, shape, byte "
            "range or checksum (corrupted or substituted shard)"
        )

    try:
        n = int.from_bytes(buf[:8].numpy().tobytes(), "little")
        header = json.loads(buf[8 : 8 + n].numpy().tobytes())
    except (ValueError, RuntimeError):
        raise bad("header") from None
    base = 8 + n
    out = []
    for name in names:
        e = entries[name]
        h = header.get(name) if isinstance(header, dict) else None
        a, b = e["offsets"]
        if (
            not isinstance(h, dict)
            or h.get("dtype") != _CODES.get(e["dtype"])
            or h.get("shape") != e["shape"]
            or h.get("data_offsets") != [a, b]
            or base + b > buf.numel()
        ):
            raise bad(repr(name))
        piece = buf[base + a : base + b]
        if verify and _xxh3(piece.numpy().data.cast("B")) != e["xxh3_128"]:
            raise bad(repr(name))
        out.append((name, piece.view(getattr(torch, e["dtype"])).reshape(e["shape"])))
    return out


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
