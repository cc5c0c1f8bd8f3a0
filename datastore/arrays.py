"""Array datasets: named Zarr v3 arrays (sharding codec) committed by a manifest.

Packed token sequences and embeddings are N-d arrays whose first axis is rows. Each array is a
standalone Zarr v3 array at ``arrays/<writer-token>/<name>`` below the dataset prefix, chunked
along rows and grouped into shard objects with Zarr's sharding codec (one object per
``shard_rows`` rows), inner chunks compressed with zstd and protected by a CRC32C codec, so a
bit flip fails the read that touches it. Any Zarr v3 reader (zarr-python, tensorstore) can open
the array path directly; the manifest adds sizes and checksums of every object for ``verify``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from datastore import __version__
from datastore.atomic import CommitOnExit, commit_manifest
from datastore.config import StorageConfig
from datastore.errors import InvalidInput, ShardyardError
from datastore.manifest import ArrayInfo, CreationInfo, Manifest, ObjectEntry, ParentRef, checksum
from datastore.store import ObjectStore, open_store
from datastore.uri import Location

__all__ = ["ArrayDatasetWriter", "open_zarr_array", "zarr_store"]


def zarr_store(store: ObjectStore, path: str, *, read_only: bool) -> Any:
    """A zarr v3 store rooted at ``path`` below ``store``: LocalStore, or obstore over S3.

    Rooting the zarr store at the array itself keeps zarr from writing implicit group
    metadata into the dataset prefix.
    """
    import zarr.storage

    loc: Location = store.location.join(path)
    if loc.scheme == "file":
        return zarr.storage.LocalStore(loc.path, read_only=read_only)
    from datastore._s3 import S3Store
    from datastore.s3 import obstore_s3

    assert isinstance(store, S3Store)
    return zarr.storage.ObjectStore(
        obstore_s3(store.config, loc.bucket, loc.path), read_only=read_only
    )


def open_zarr_array(store: ObjectStore, info: ArrayInfo) -> Any:
    """Open the array ``info`` describes, read-only."""
    import zarr

    return zarr.open_array(zarr_store(store, info.path, read_only=True), mode="r")


class _Appender:
    """Buffers rows of one array and writes them a whole shard at a time."""

    def __init__(self, array: Any, shard_rows: int) -> None:
        self.array = array
        self.shard_rows = shard_rows
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0

    def append(self, data: np.ndarray) -> None:
        self.pending.append(data)
        self.pending_rows += data.shape[0]
        if self.pending_rows >= self.shard_rows:
            block = np.concatenate(self.pending)
            full = (block.shape[0] // self.shard_rows) * self.shard_rows
            self._write(block[:full])
            rest = block[full:]
            self.pending, self.pending_rows = ([rest] if rest.shape[0] else []), rest.shape[0]

    def flush(self) -> None:
        if self.pending_rows:
            self._write(np.concatenate(self.pending))
            self.pending, self.pending_rows = [], 0

    def _write(self, block: np.ndarray) -> None:
        start = self.array.shape[0]
        self.array.resize((start + block.shape[0], *self.array.shape[1:]))
        self.array[start : start + block.shape[0]] = block


class ArrayDatasetWriter(CommitOnExit):
    """Write an array dataset version: create arrays, append rows, commit on clean exit.

    ``create_array(name, dtype=..., row_shape=(2048,), chunk_rows=..., shard_rows=...)`` declares
    an array whose rows have ``row_shape``; ``append(name, rows)`` adds rows along axis 0. Rows
    are written whole shards at a time (no read-modify-write of shard objects).
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
        import zarr
        import zarr.codecs

        if name in self._arrays or "/" in name or not name:
            raise InvalidInput(f"array name {name!r} is empty, has '/', or is already declared")
        if shard_rows % chunk_rows:
            raise InvalidInput(
                f"shard_rows ({shard_rows}) must be a multiple of chunk_rows ({chunk_rows})"
            )
        compressors: list[Any] = []
        if compression == "zstd":
            compressors.append(zarr.codecs.ZstdCodec(level=3))
        compressors.append(zarr.codecs.Crc32cCodec())
        row = tuple(int(x) for x in row_shape)
        array = zarr.create_array(
            zarr_store(self.store, f"{self.prefix}/{name}", read_only=False),
            shape=(0, *row),
            dtype=np.dtype(dtype),
            chunks=(chunk_rows, *row),
            shards=(shard_rows, *row),
            compressors=compressors,
            fill_value=0,
            attributes=attributes or {},
        )
        self._arrays[name] = _Appender(array, shard_rows)

    def append(self, name: str, rows: np.ndarray) -> None:
        """Append ``rows`` (shape ``(n, *row_shape)``) to array ``name``."""
        if self._closed:
            raise ShardyardError(f"writer for {self.uri} is already committed or aborted")
        try:
            appender = self._arrays[name]
        except KeyError:
            raise InvalidInput(f"array {name!r} was not declared with create_array") from None
        rows = np.asarray(rows)
        want = appender.array.shape[1:]
        if rows.shape[1:] != want:
            raise InvalidInput(
                f"rows for array {name!r} have shape {rows.shape}; rows must be {want}"
            )
        appender.append(rows.astype(appender.array.dtype, copy=False))

    def commit(self) -> Manifest:
        """Flush every array, checksum its objects and create the manifest."""
        if self._closed:
            raise ShardyardError(f"writer for {self.uri} is already committed or aborted")
        if not self._arrays:
            raise InvalidInput(f"no arrays were declared for {self.uri}")
        try:
            infos = [self._finish(name, app) for name, app in self._arrays.items()]
        except BaseException:
            self.abort()
            raise
        self._closed = True

        def build(v: int) -> Manifest:
            return Manifest(
                version=v,
                kind="array",
                schema=None,
                arrays=infos,
                created=CreationInfo.now(f"shardyard {__version__}"),
                parents=self.parents,
                metadata=self.metadata,
            )

        try:
            self.manifest = commit_manifest(self.store, build, self.version)
        except BaseException:
            self._delete_objects()  # lost the race or could not encode: they are garbage
            raise
        return self.manifest

    def _finish(self, name: str, app: _Appender) -> ArrayInfo:
        app.flush()
        path = f"{self.prefix}/{name}"
        objects = []
        for obj in self.store.list(path + "/"):
            self.store.make_durable(obj.key)  # zarr's LocalStore does not fsync
            data = self.store.read_buffer(obj.key, obj.size)
            objects.append(ObjectEntry(path=obj.key, bytes=data.size, checksum=checksum(data)))
        arr = app.array
        return ArrayInfo(
            name=name,
            path=path,
            shape=list(arr.shape),
            dtype=str(arr.dtype),
            chunks=list(arr.chunks),
            shards=list(arr.shards or arr.chunks),
            objects=objects,
        )

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
