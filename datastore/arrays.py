"""Array datasets: named Zarr v3 arrays (sharding codec) committed by a manifest.

Packed token sequences and embeddings are N-d arrays whose first axis is rows. Each array is a
standalone Zarr v3 array at ``arrays/<prefix>/<name>`` below the dataset prefix, chunked along
rows and grouped into shard objects with Zarr's sharding codec (one object per ``shard_rows``
rows), inner chunks compressed with zstd and protected by a CRC32C codec, so a bit flip fails
the read that touches it. Any Zarr v3 reader (zarr-python, tensorstore) can open the array path
directly; the manifest adds sizes and checksums of every object for ``verify``.

Shard objects are encoded in memory (:meth:`ArrayLayout.encode_shard`) and published with one
atomic put each, so parallel writers (one Dask task per shard) never read-modify-write a shard,
a crash never leaves a torn one, and the checksum comes from the bytes in hand, not a re-read.
``zarr.json`` is written last, when the row count is known.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datastore.atomic import CommitOnExit, commit_version
from datastore.config import StorageConfig
from datastore.errors import InvalidInput, ShardyardError
from datastore.manifest import (
    ArrayInfo,
    Manifest,
    ObjectEntry,
    ParentRef,
    checksum,
)
from datastore.store import ObjectStore, open_store
from datastore.uri import Location

__all__ = [
    "ArrayDatasetWriter",
    "ArrayLayout",
    "commit_arrays",
    "open_zarr_array",
    "zarr_store",
]


def zarr_store(store: ObjectStore, path: str, *, read_only: bool) -> Any:
    """A zarr v3 store rooted at ``path`` below ``store``: LocalStore, or obstore over S3
    (boto3 in a process forked after it was opened: see ``datastore._zarr_s3``).

    Rooting the zarr store at the array itself keeps zarr from writing implicit group
    metadata into the dataset prefix.
    """
    import zarr.storage

    loc: Location = store.location.join(path)
    if loc.scheme == "file":
        return zarr.storage.LocalStore(loc.path, read_only=read_only)
    from datastore._s3 import S3Store
    from datastore._zarr_s3 import ForkSafeS3Store
    from datastore.s3 import obstore_s3

    assert isinstance(store, S3Store)
    root = path.strip("/")
    return ForkSafeS3Store(
        obstore_s3(store.config, loc.bucket, loc.path), read_only=read_only, s3=store, root=root
    )


def open_zarr_array(store: ObjectStore, info: ArrayInfo) -> Any:
    """Open the array ``info`` describes, read-only."""
    import zarr

    return zarr.open_array(zarr_store(store, info.path, read_only=True), mode="r")


@dataclass(frozen=True)
class ArrayLayout:
    """How one array is stored: dtype, row shape, rows per inner chunk and per shard object,
    compression and user attributes. Everything but the row count, which may be unknown
    until the last shard is written."""

    dtype: str
    row_shape: tuple[int, ...] = ()
    chunk_rows: int = 64
    shard_rows: int = 4096
    compression: str | None = "zstd"
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.chunk_rows < 1 or self.shard_rows < 1 or self.shard_rows % self.chunk_rows:
            raise InvalidInput(
                f"shard_rows ({self.shard_rows}) must be a multiple of chunk_rows "
                f"({self.chunk_rows}), both positive"
            )
        if self.compression not in (None, "zstd"):
            raise InvalidInput(f"array compression {self.compression!r}: use 'zstd' or None")
        np.dtype(self.dtype)  # raises TypeError for nonsense

    def num_shards(self, rows: int) -> int:
        """Shard objects an array of ``rows`` rows consists of."""
        return math.ceil(rows / self.shard_rows)

    def shard_key(self, index: int) -> str:
        """Key of shard object ``index`` relative to the array path (Zarr's default keys)."""
        return "/".join(["c", str(index)] + ["0"] * len(self.row_shape))

    def _zarr_array(self, rows: int, backing: dict[str, Any]) -> Any:
        import zarr
        import zarr.codecs
        import zarr.storage

        compressors: list[Any] = []
        if self.compression == "zstd":
            compressors.append(zarr.codecs.ZstdCodec(level=3))
        compressors.append(zarr.codecs.Crc32cCodec())
        return zarr.create_array(
            zarr.storage.MemoryStore(store_dict=backing),
            shape=(rows, *self.row_shape),
            dtype=np.dtype(self.dtype),
            chunks=(self.chunk_rows, *self.row_shape),
            shards=(self.shard_rows, *self.row_shape),
            compressors=compressors,
            fill_value=0,
            attributes=self.attributes,
        )

    def metadata_bytes(self, rows: int) -> bytes:
        """The array's ``zarr.json`` for ``rows`` rows (stable bytes)."""
        backing: dict[str, Any] = {}
        self._zarr_array(rows, backing)
        doc = json.loads(backing["zarr.json"].to_bytes())
        return json.dumps(doc, sort_keys=True, indent=1).encode()

    def encode_shard(self, block: np.ndarray) -> bytes:
        """The bytes of a shard object holding ``block`` (at most ``shard_rows`` rows; fewer
        only for the array's last shard). Deterministic: same rows, same bytes."""
        if block.shape[1:] != self.row_shape or not 0 < block.shape[0] <= self.shard_rows:
            raise InvalidInput(
                f"a shard holds 1..{self.shard_rows} rows of shape {self.row_shape}; "
                f"got an array of shape {block.shape}"
            )
        backing: dict[str, Any] = {}
        arr = self._zarr_array(block.shape[0], backing)
        arr[...] = block.astype(self.dtype, copy=False)
        key = self.shard_key(0)
        return bytes(backing[key].to_bytes()) if key in backing else b""

    def write_shard(
        self, store: ObjectStore, path: str, index: int, block: np.ndarray
    ) -> ObjectEntry | None:
        """Publish shard ``index`` of the array at ``path`` (atomic put); its manifest entry,
        or None when every row equals the fill value (Zarr stores no object then)."""
        data = self.encode_shard(block)
        if not data:
            return None
        key = f"{path}/{self.shard_key(index)}"
        store.put(key, data)
        return ObjectEntry(path=key, bytes=len(data), checksum=checksum(data))

    def write_metadata(self, store: ObjectStore, path: str, rows: int) -> ObjectEntry:
        """Publish ``zarr.json`` for ``rows`` rows; idempotent (same bytes every time)."""
        data = self.metadata_bytes(rows)
        key = f"{path}/zarr.json"
        store.put(key, data)
        return ObjectEntry(path=key, bytes=len(data), checksum=checksum(data))

    def info(self, name: str, path: str, rows: int, objects: Sequence[ObjectEntry]) -> ArrayInfo:
        """The manifest entry of a finished array."""
        return ArrayInfo(
            name=name,
            path=path,
            shape=[rows, *self.row_shape],
            dtype=str(np.dtype(self.dtype)),
            chunks=[self.chunk_rows, *self.row_shape],
            shards=[self.shard_rows, *self.row_shape],
            objects=sorted(objects, key=lambda o: o.path),
        )


def commit_arrays(
    store: ObjectStore,
    arrays: Sequence[ArrayInfo],
    *,
    version: int | None = None,
    parents: Sequence[ParentRef] = (),
    metadata: dict[str, Any] | None = None,
) -> Manifest:
    """Commit an array version made of arrays whose objects are already published.

    ``version`` None takes the next free number; an explicit one that is taken raises
    :class:`~datastore.atomic.VersionConflict`.
    """
    infos = list(arrays)
    if not infos:
        raise InvalidInput(f"no arrays to commit to {store.uri}")
    return commit_version(
        store, version, parents, metadata, kind="array", schema=None, arrays=infos
    )


class _Appender:
    """Buffers rows of one array and publishes them a whole shard at a time."""

    def __init__(self, store: ObjectStore, path: str, layout: ArrayLayout) -> None:
        self.store = store
        self.path = path
        self.layout = layout
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.rows = 0
        self.objects: list[ObjectEntry] = []

    def append(self, data: np.ndarray) -> None:
        self.pending.append(data)
        self.pending_rows += data.shape[0]
        size = self.layout.shard_rows
        if self.pending_rows >= size:
            block = np.concatenate(self.pending)
            full = (block.shape[0] // size) * size
            for start in range(0, full, size):
                self._write(block[start : start + size])
            rest = block[full:]
            self.pending, self.pending_rows = ([rest] if rest.shape[0] else []), rest.shape[0]

    def finish(self, name: str) -> ArrayInfo:
        if self.pending_rows:
            self._write(np.concatenate(self.pending))
            self.pending, self.pending_rows = [], 0
        meta = self.layout.write_metadata(self.store, self.path, self.rows)
        return self.layout.info(name, self.path, self.rows, [*self.objects, meta])

    def _write(self, block: np.ndarray) -> None:
        index = self.rows // self.layout.shard_rows
        entry = self.layout.write_shard(self.store, self.path, index, block)
        if entry is not None:
            self.objects.append(entry)
        self.rows += block.shape[0]


class ArrayDatasetWriter(CommitOnExit):
    """Write an array dataset version: create arrays, append rows, commit on clean exit.

    ``create_array(name, dtype=..., row_shape=(2048,), chunk_rows=..., shard_rows=...)`` declares
    an array whose rows have ``row_shape``; ``append(name, rows)`` adds rows along axis 0. Rows
    are published whole shards at a time; nothing is visible before :meth:`commit`.
    """

    def __init__(
        self,
        uri: str,
        *,
        version: int | None = None,
        parents: Sequence[ParentRef] = (),
        metadata: dict[str, Any] | None = None,
        config: StorageConfig | None = None,
        store: ObjectStore | None = None,
    ) -> None:
        self.store = store or open_store(uri, config)
        self.uri = self.store.uri
        self.version = version
        self.parents = list(parents)
        self.metadata = dict(metadata or {})
        self.prefix = f"arrays/{uuid.uuid4().hex}"
        self.manifest: Manifest | None = None
        self._arrays: dict[str, _Appender] = {}
        self._closed = False

    def create_array(
        self,
        name: str,
        *,
        dtype: Any,
        row_shape: Sequence[int] = (),
        chunk_rows: int = 64,
        shard_rows: int = 4096,
        compression: str | None = "zstd",
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """Declare array ``name``; ``shard_rows`` must be a multiple of ``chunk_rows``."""
        if name in self._arrays or "/" in name or not name:
            raise InvalidInput(f"array name {name!r} is empty, has '/', or is already declared")
        layout = ArrayLayout(
            dtype=str(np.dtype(dtype)),
            row_shape=tuple(int(x) for x in row_shape),
            chunk_rows=chunk_rows,
            shard_rows=shard_rows,
            compression=compression,
            attributes=dict(attributes or {}),
        )
        self._arrays[name] = _Appender(self.store, f"{self.prefix}/{name}", layout)

    def append(self, name: str, rows: np.ndarray) -> None:
        """Append ``rows`` (shape ``(n, *row_shape)``) to array ``name``."""
        if self._closed:
            raise ShardyardError(f"writer for {self.uri} is already committed or aborted")
        try:
            appender = self._arrays[name]
        except KeyError:
            raise InvalidInput(f"array {name!r} was not declared with create_array") from None
        rows = np.asarray(rows)
        want = appender.layout.row_shape
        if rows.shape[1:] != want:
            raise InvalidInput(
                f"rows for array {name!r} have shape {rows.shape}; rows must be {want}"
            )
        appender.append(rows.astype(appender.layout.dtype, copy=False))

    def commit(self) -> Manifest:
        """Publish every array's last shard and metadata, then create the manifest."""
        if self._closed:
            raise ShardyardError(f"writer for {self.uri} is already committed or aborted")
        if not self._arrays:
            raise InvalidInput(f"no arrays were declared for {self.uri}")
        try:
            infos = [app.finish(name) for name, app in self._arrays.items()]
        except BaseException:
            self.abort()
            raise
        self._closed = True
        try:
            self.manifest = commit_arrays(
                self.store,
                infos,
                version=self.version,
                parents=self.parents,
                metadata=self.metadata,
            )
        except BaseException:
            self._delete_objects()  # lost the race or could not encode: they are garbage
            raise
        return self.manifest

    def abort(self) -> None:
        """Discard what was written; nothing becomes visible. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._delete_objects()

    def _delete_objects(self) -> None:
        for obj in list(self.store.list(self.prefix + "/")):
            try:
                self.store.delete(obj.key)
            except Exception:
                continue
