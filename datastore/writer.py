"""DatasetWriter: batches in, Parquet or Arrow IPC shards out, manifest committed last."""

from __future__ import annotations

import concurrent.futures as cf
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from datastore.atomic import CommitOnExit, commit_version
from datastore.config import StorageConfig
from datastore.errors import InvalidInput, ShardyardError, Unsupported
from datastore.manifest import (
    CHECKSUM_ALGORITHM,
    Manifest,
    ParentRef,
    ShardInfo,
    TableFormat,
    column_stats,
    merge_stats,
)
from datastore.store import Data, ObjectStore, ObjectWriter, open_store

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "DatasetWriter",
    "ShardEncoder",
    "commit_table",
    "write_shard",
]

DEFAULT_SHARD_SIZE = 256 * 1024 * 1024
DEFAULT_ROW_GROUP_BYTES = 16 * 1024 * 1024
_EXT = {"parquet": "parquet", "arrow": "arrow"}
_CONTENT_TYPE = {
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.file",
}


class _HashingSink:
    """The file object the Parquet / Arrow IPC writer encodes into: every byte is hashed
    (xxh3-128, the manifest's checksum) on its way to the store's streaming writer, so a shard
    is never held whole in memory nor read twice."""

    closed = False

    def __init__(self, target: ObjectWriter) -> None:
        self.target = target
        self._hash = xxhash.xxh3_128()
        self.size = 0
        self.discarded = False

    def write(self, data: Data) -> int:
        view = memoryview(data)
        if self.discarded:  # an abandoned encoder flushing on garbage collection
            return view.nbytes
        self._hash.update(view)
        self.target.write(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        pass  # the shard is finished by _close_shard, not by the encoder

    def checksum(self) -> str:
        return f"{CHECKSUM_ALGORITHM}:{self._hash.hexdigest()}"

    def discard(self) -> None:
        self.discarded = True
        self.target.abort()


class ShardEncoder:
    """Encode one table shard at a caller-chosen ``path``, streamed to the store and hashed.

    ``write`` appends a table as one row group (Parquet) or record batch (Arrow IPC);
    :meth:`finish` publishes the object and returns its :class:`ShardInfo`; :meth:`discard`
    abandons it. The bytes depend only on the tables written and the format options, so
    distributed writers that encode the same rows produce identical shards.
    """

    def __init__(
        self,
        store: ObjectStore,
        path: str,
        schema: pa.Schema,
        format: TableFormat = "parquet",
        compression: str | None = "zstd",
    ) -> None:
        if format not in _EXT:
            raise Unsupported(f"table format {format!r} is not one of parquet, arrow")
        self.path = path
        self.format = format
        self.rows = 0
        self.stats: dict[str, dict[str, Any]] = {}
        target = store.open_writer(path, content_type=_CONTENT_TYPE[format])
        self._sink = _HashingSink(target)
        self._writer: Any
        if format == "parquet":
            self._writer = pq.ParquetWriter(
                self._sink,
                schema,
                compression=compression or "none",
                write_page_checksum=True,
                write_statistics=True,
            )
        else:
            self._writer = pa.ipc.new_file(self._sink, schema)

    @property
    def size(self) -> int:
        """Bytes encoded so far."""
        return self._sink.size

    def write(self, table: pa.Table) -> None:
        """Append ``table`` as one row group / record batch (empty tables are skipped)."""
        if table.num_rows == 0:
            return
        if self.format == "parquet":
            self._writer.write_table(table, row_group_size=table.num_rows)
        else:
            self._writer.write_table(table, max_chunksize=table.num_rows)
        self.rows += table.num_rows
        self.stats = merge_stats(self.stats, column_stats(table))

    def finish(self) -> ShardInfo:
        """Close the encoder and publish the object (fsync + rename, or multipart completion)."""
        try:
            self._writer.close()
            self._sink.target.commit()
        except BaseException:
            self._sink.target.abort()
            raise
        return ShardInfo(
            path=self.path,
            bytes=self._sink.size,
            checksum=self._sink.checksum(),
            rows=self.rows,
            stats=self.stats,
        )

    def discard(self) -> None:
        """Abandon the shard; nothing is published. Never raises."""
        try:
            self._sink.discard()
        except Exception:
            pass


def write_shard(
    store: ObjectStore,
    path: str,
    table: pa.Table,
    *,
    format: TableFormat = "parquet",
    compression: str | None = "zstd",
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
) -> ShardInfo:
    """Write ``table`` as one shard object at ``path`` (relative to the dataset prefix).

    For writers that produce shards in parallel (Dask tasks) and commit them together with
    :func:`commit_table`. Overwrites an object left at ``path`` by an earlier, unfinished run;
    the result is a deterministic function of ``table`` and the options.
    """
    step = max(1, (row_group_bytes * table.num_rows) // max(1, table.nbytes))
    encoder = ShardEncoder(store, path, table.schema, format, compression)
    try:
        for start in range(0, table.num_rows, step):
            encoder.write(table.slice(start, step))
    except BaseException:
        encoder.discard()
        raise
    return encoder.finish()


def commit_table(
    store: ObjectStore,
    shards: Sequence[ShardInfo],
    schema: pa.Schema,
    *,
    format: TableFormat = "parquet",
    version: int | None = None,
    parents: Sequence[ParentRef] = (),
    metadata: dict[str, Any] | None = None,
) -> Manifest:
    """Commit a table version made of already published ``shards`` (in order).

    ``version`` None takes the next free number; an explicit one that is taken raises
    :class:`~datastore.atomic.VersionConflict`.
    """
    return commit_version(
        store,
        version,
        parents,
        metadata,
        kind="table",
        schema=schema,
        table_format=format,
        shards=list(shards),
    )


class DatasetWriter(CommitOnExit):
    """Write a table dataset version: ``with DatasetWriter(uri, ...) as w: w.write(batch)``.

    Shards roll over once their encoded size reaches ``shard_size`` bytes; rows are buffered
    into row groups of about ``row_group_bytes`` (in memory) first. Shards are streamed to the
    store as they are encoded and hashed on the way (local: a temporary file; S3: multipart
    parts uploaded in the background), so no shard is held whole in memory; a finished shard is
    published (fsync + rename, or multipart completion) in the background while the next one is
    encoded (at most one in flight). The
    manifest is committed on a clean exit of the ``with`` block (or by :meth:`commit`); after an
    exception nothing is committed and the uploaded shards, which no manifest names, are
    removed best-effort.

    ``format="parquet"`` (zstd, page checksums) is compact; ``format="arrow"`` writes
    uncompressed Arrow IPC files that other readers can memory-map for zero-copy access. ``version``
    pins the version number to commit (a lost race raises
    :class:`~datastore.atomic.VersionConflict`); by default the next free number is taken.
    """

    def __init__(
        self,
        uri: str,
        *,
        schema: pa.Schema | None = None,
        format: TableFormat = "parquet",
        shard_size: int = DEFAULT_SHARD_SIZE,
        row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
        compression: str | None = "zstd",
        version: int | None = None,
        parents: Sequence[ParentRef] = (),
        metadata: dict[str, Any] | None = None,
        config: StorageConfig | None = None,
        store: ObjectStore | None = None,
    ) -> None:
        if format not in _EXT:
            raise Unsupported(f"table format {format!r} is not one of parquet, arrow")
        if shard_size <= 0:
            raise Unsupported(f"shard_size must be a positive number of bytes, got {shard_size}")
        self.store = store or open_store(uri, config)
        self.uri = self.store.uri
        self.schema = schema
        self.format: TableFormat = format
        self.shard_size = shard_size
        # Row groups are the unit of roll-over, so keep several of them per shard.
        self.row_group_bytes = max(1, min(row_group_bytes, shard_size // 4))
        self.compression = compression if format == "parquet" else None
        self.version = version
        self.parents = list(parents)
        self.metadata = dict(metadata or {})
        # A token no other writer uses: shards of uncommitted writers never collide.
        self.prefix = f"data/{uuid.uuid4().hex}"
        self.manifest: Manifest | None = None
        self._shards: list[ShardInfo] = []
        self._pending: list[pa.RecordBatch] = []
        self._pending_bytes = 0
        self._encoder: ShardEncoder | None = None
        self._next_index = 0
        self._uploads = cf.ThreadPoolExecutor(1, thread_name_prefix="shardyard-upload")
        self._inflight: cf.Future[ShardInfo] | None = None
        self._closed = False

    # -- writing ---------------------------------------------------------------------------
    def write(self, data: pa.RecordBatch | pa.Table | Iterable[pa.RecordBatch]) -> None:
        """Append rows: a record batch, a table, or an iterable of record batches."""
        if self._closed:
            raise ShardyardError(f"writer for {self.uri} is already committed or aborted")
        if isinstance(data, pa.Table):
            batches: Iterable[pa.RecordBatch] = data.to_batches()
        elif isinstance(data, pa.RecordBatch):
            batches = [data]
        else:
            batches = data
        for batch in batches:
            batch = self._conform(batch)
            # Split big batches so row groups, and hence shards, keep near their target sizes.
            step = max(1, (self.row_group_bytes * batch.num_rows) // max(1, batch.nbytes))
            for start in range(0, batch.num_rows, step):
                piece = batch.slice(start, step)
                self._pending.append(piece)
                self._pending_bytes += piece.nbytes
                if self._pending_bytes >= self.row_group_bytes:
                    self._flush_row_group()

    def _conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self.schema is None:
            self.schema = batch.schema
            return batch
        if batch.schema.equals(self.schema):
            return batch
        try:
            return batch.select(self.schema.names).cast(self.schema)
        except (KeyError, ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise InvalidInput(
                f"batch for {self.uri} does not match the dataset schema "
                f"({', '.join(self.schema.names)}): {err}"
            ) from None

    def _flush_row_group(self) -> None:
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        self._pending, self._pending_bytes = [], 0
        if self._encoder is None:
            self._open_shard()
        assert self._encoder is not None
        self._encoder.write(table)
        if self._encoder.size >= self.shard_size:
            self._close_shard()

    def _open_shard(self) -> None:
        assert self.schema is not None
        path = f"{self.prefix}/part-{self._next_index:05d}.{_EXT[self.format]}"
        self._next_index += 1
        self._encoder = ShardEncoder(self.store, path, self.schema, self.format, self.compression)

    def _close_shard(self) -> None:
        if self._encoder is None:
            return
        encoder, self._encoder = self._encoder, None
        self._wait_inflight()
        self._inflight = self._uploads.submit(encoder.finish)

    def _wait_inflight(self) -> None:
        if self._inflight is not None:
            future, self._inflight = self._inflight, None
            self._shards.append(future.result())

    # -- ending ----------------------------------------------------------------------------
    def commit(self) -> Manifest:
        """Flush, upload the last shard and create the manifest; returns it."""
        if self._closed:
            raise ShardyardError(f"writer for {self.uri} is already committed or aborted")
        try:
            self._flush_row_group()
            self._close_shard()
            self._wait_inflight()
        except BaseException:
            self.abort()
            raise
        if self.schema is None:
            raise InvalidInput(f"nothing was written to {self.uri} and no schema was given")
        self._closed = True
        self._uploads.shutdown()
        try:
            self.manifest = commit_table(
                self.store,
                self._shards,
                self.schema,
                format=self.format,
                version=self.version,
                parents=self.parents,
                metadata=self.metadata,
            )
        except BaseException:
            self._delete_shards()  # lost the race or could not encode: they are garbage
            raise
        return self.manifest

    def abort(self) -> None:
        """Discard everything written; nothing becomes visible. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._encoder is not None:
            self._encoder.discard()
        self._encoder = None
        try:
            self._wait_inflight()
        except BaseException:
            pass
        self._uploads.shutdown()
        self._delete_shards()

    def _delete_shards(self) -> None:
        for shard in self._shards:
            try:
                self.store.delete(shard.path)
            except Exception:
                continue
