"""Reading committed datasets: open a version, random access, projection, batches, verify."""

from __future__ import annotations

import bisect
import concurrent.futures as cf
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datastore.atomic import latest_version, list_versions
from datastore.config import StorageConfig
from datastore.errors import Corrupt, InvalidInput, NotFound, Unsupported
from datastore.manifest import (
    CHECKSUM_ALGORITHM,
    Manifest,
    ObjectEntry,
    ShardInfo,
    checksum,
    manifest_key,
)
from datastore.store import ObjectStore, open_store

__all__ = [
    "ArrayDataset",
    "Dataset",
    "TableDataset",
    "VerifyResult",
    "dataset_versions",
    "open_dataset",
]

_CACHED_SHARDS = 2


@dataclass
class VerifyResult:
    """Outcome of :meth:`Dataset.verify`: objects checked and one line per problem found."""

    checked: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every object matched its size and checksum."""
        return not self.problems


def dataset_versions(uri: str, config: StorageConfig | None = None) -> list[int]:
    """Committed versions of the dataset at ``uri``, ascending (empty if none)."""
    return list_versions(open_store(uri, config))


def open_dataset(
    uri: str,
    version: int | None = None,
    *,
    config: StorageConfig | None = None,
    verify_reads: bool = True,
) -> TableDataset | ArrayDataset:
    """Open version ``version`` (default: the latest) of the dataset at ``uri``.

    ``verify_reads`` checks each shard's size and checksum when it is loaded, so a truncated or
    bit-flipped shard raises :class:`~datastore.errors.Corrupt` naming it instead of returning
    wrong rows. Raises :class:`~datastore.errors.NotFound` when there is no such dataset or
    version, :class:`~datastore.errors.Unsupported` for a manifest of a newer format.
    """
    store = open_store(uri, config)
    if version is None:
        version = latest_version(store)
        if version is None:
            raise NotFound(
                f"no dataset at {store.uri} (no manifests under '_manifests/'); was it committed?"
            )
    try:
        raw = store.get(manifest_key(version))
    except NotFound:
        known = list_versions(store)
        hint = f"known versions: {known}" if known else "no versions are committed there"
        raise NotFound(f"dataset {store.uri} has no version {version}; {hint}") from None
    where = store.uri_of(manifest_key(version))
    manifest = Manifest.from_json(raw, where)
    if manifest.version != version:
        raise Corrupt(f"manifest {where} says it is version {manifest.version}")
    if manifest.kind == "array":
        return ArrayDataset(store, manifest, verify_reads=verify_reads)
    return TableDataset(store, manifest, verify_reads=verify_reads)


class Dataset:
    """What table and array datasets share: identity, manifest, and verification."""

    def __init__(self, store: ObjectStore, manifest: Manifest, *, verify_reads: bool = True):
        self.store = store
        self.manifest = manifest
        self.verify_reads = verify_reads

    @property
    def uri(self) -> str:
        """The dataset's root URI."""
        return self.store.uri

    @property
    def version(self) -> int:
        """The committed version this object reads."""
        return self.manifest.version

    @property
    def nbytes(self) -> int:
        """Stored bytes of the version's data objects."""
        return self.manifest.nbytes

    def __len__(self) -> int:
        return self.manifest.rows

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r}, version={self.version}, rows={len(self)})"

    def _load(self, entry: ObjectEntry) -> pa.Buffer:
        """The object's bytes, checked against the manifest when ``verify_reads`` is on."""
        buf = self._fetch(entry)
        if self.verify_reads:
            _check(entry, buf, self.store.uri_of(entry.path))
        return buf

    def _fetch(self, entry: ObjectEntry) -> pa.Buffer:
        """The object's bytes, not yet checked."""
        try:
            return self.store.read_buffer(entry.path, entry.bytes)
        except NotFound:
            raise NotFound(
                f"shard {self.store.uri_of(entry.path)} of {self.uri} version {self.version} is "
                "missing (deleted under the reader?)"
            ) from None

    def verify(self) -> VerifyResult:
        """Re-read every data object and compare size and checksum with the manifest."""
        result = VerifyResult()
        for entry in self.manifest.objects:
            where = self.store.uri_of(entry.path)
            result.checked += 1
            try:
                buf = self.store.read_buffer(entry.path, entry.bytes)
                result.bytes += buf.size
                _check(entry, buf, where)
            except (NotFound, Corrupt) as err:
                result.problems.append(str(err))
        return result


def _check(entry: ObjectEntry, buf: pa.Buffer, where: str) -> None:
    if buf.size != entry.bytes:
        raise Corrupt(
            f"shard {where} is {buf.size} bytes but the manifest says {entry.bytes} "
            "(truncated or replaced)"
        )
    algorithm = entry.checksum.partition(":")[0]
    if algorithm != CHECKSUM_ALGORITHM:
        raise Unsupported(
            f"shard {where} uses checksum {algorithm!r}; this Shardyard knows "
            f"{CHECKSUM_ALGORITHM!r}: upgrade shardyard to read it"
        )
    digest = checksum(buf)
    if digest != entry.checksum:
        raise Corrupt(f"shard {where} fails its checksum ({digest} != {entry.checksum})")


class TableDataset(Dataset):
    """A committed table dataset (Parquet or Arrow IPC shards).

    ``ds[i]`` is row ``i`` as a dict, ``ds[a:b]`` a :class:`pyarrow.Table`. The two most
    recently loaded shards stay decoded, so sequential access does not reload.
    """

    def __init__(self, store: ObjectStore, manifest: Manifest, *, verify_reads: bool = True):
        super().__init__(store, manifest, verify_reads=verify_reads)
        self._offsets = np.cumsum([0] + [s.rows for s in manifest.shards]).tolist()
        self._cache: OrderedDict[tuple[int, tuple[str, ...] | None], pa.Table] = OrderedDict()

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of every shard."""
        assert self.manifest.schema is not None
        return self.manifest.schema

    @property
    def shards(self) -> list[ShardInfo]:
        """Shards in row order, with rows, bytes, checksum and column statistics."""
        return self.manifest.shards

    @property
    def format(self) -> str:
        """``parquet`` or ``arrow``."""
        return self.manifest.table_format or "parquet"

    def read_shard(self, index: int, columns: Sequence[str] | None = None) -> pa.Table:
        """Shard ``index`` as a table, optionally only ``columns``."""
        return self._read_shard(index, columns)

    def _read_shard(
        self,
        index: int,
        columns: Sequence[str] | None,
        loaded: cf.Future[pa.Buffer] | None = None,
    ) -> pa.Table:
        """:meth:`read_shard`, taking the shard's bytes from ``loaded`` (a prefetch of
        :meth:`_fetch`, checked here) when given."""
        cols = tuple(columns) if columns is not None else None
        key = (index, cols)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        self._check_columns(cols)
        shard = self.shards[index]
        if loaded is None:
            buf = self._load(shard)
        else:
            buf = loaded.result()
            if self.verify_reads:
                _check(shard, buf, self.store.uri_of(shard.path))
        where = self.store.uri_of(shard.path)
        try:
            if self.format == "arrow":
                table = pa.ipc.open_file(buf).read_all()
                if cols is not None:
                    table = table.select(list(cols))
            else:
                table = pq.read_table(
                    pa.BufferReader(buf),
                    columns=list(cols) if cols is not None else None,
                    # With verify_reads the shard's xxh3-128 has just covered every byte, so
                    # the pages' CRC32s would only check the same bytes again, more slowly.
                    page_checksum_verification=not self.verify_reads,
                )
        except (pa.ArrowInvalid, OSError) as err:
            raise Corrupt(f"shard {where} cannot be decoded: {err}") from None
        if table.num_rows != shard.rows:
            raise Corrupt(f"shard {where} has {table.num_rows} rows, manifest says {shard.rows}")
        self._cache[key] = table
        while len(self._cache) > _CACHED_SHARDS:
            self._cache.popitem(last=False)
        return table

    def _check_columns(self, cols: Sequence[str] | None) -> None:
        if cols is not None:
            missing = [c for c in cols if c not in self.schema.names]
            if missing:
                raise InvalidInput(
                    f"dataset {self.uri} has no column(s) {missing}; it has {self.schema.names}"
                )

    def _scan(self, columns: Sequence[str] | None) -> Iterator[pa.Table]:
        """Every shard in order, decoded. The next shard's bytes are fetched in a background
        thread while the current one is checked against the manifest and decoded."""
        self._check_columns(columns)
        cols = tuple(columns) if columns is not None else None
        count = len(self.shards)
        with cf.ThreadPoolExecutor(1, thread_name_prefix="shardyard-prefetch") as pool:

            def prefetch(i: int) -> cf.Future[pa.Buffer] | None:
                if i >= count or (i, cols) in self._cache:
                    return None
                return pool.submit(self._fetch, self.shards[i])

            upcoming = prefetch(0)
            try:
                for i in range(count):
                    current, upcoming = upcoming, prefetch(i + 1)
                    yield self._read_shard(i, columns, current)
            finally:
                if upcoming is not None:
                    upcoming.cancel()  # a fetch already running is awaited by the pool's exit

    def _locate(self, row: int) -> tuple[int, int]:
        shard = bisect.bisect_right(self._offsets, row) - 1
        return shard, row - self._offsets[shard]

    @overload
    def __getitem__(self, key: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, key: slice) -> pa.Table: ...
    def __getitem__(self, key: int | slice) -> dict[str, Any] | pa.Table:
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self.take(list(range(start, stop, step)))
            return self.slice(start, stop)
        index = int(key)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"row {key} is out of range for {self.uri} ({n} rows)")
        shard, offset = self._locate(index)
        row: dict[str, Any] = self.read_shard(shard).slice(offset, 1).to_pylist()[0]
        return row

    def slice(self, start: int, stop: int, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows ``[start, stop)`` as one table, reading only the shards they touch."""
        start, stop = max(0, start), min(len(self), stop)
        pieces: list[pa.Table] = []
        row = start
        while row < stop:
            shard, offset = self._locate(row)
            take = min(stop - row, self.shards[shard].rows - offset)
            pieces.append(self.read_shard(shard, columns).slice(offset, take))
            row += take
        if not pieces:
            return self._empty(columns)
        return pa.concat_tables(pieces)

    def take(self, indices: Sequence[int], columns: Sequence[str] | None = None) -> pa.Table:
        """Rows at ``indices`` (any order) as one table."""
        pieces = []
        for i in indices:
            shard, offset = self._locate(i if i >= 0 else i + len(self))
            pieces.append(self.read_shard(shard, columns).slice(offset, 1))
        return pa.concat_tables(pieces) if pieces else self._empty(columns)

    def _empty(self, columns: Sequence[str] | None) -> pa.Table:
        schema = (
            self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
        )
        return schema.empty_table()

    def iter_batches(
        self, columns: Sequence[str] | None = None, batch_size: int | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Record batches in row order, shard after shard (``batch_size`` rows at most)."""
        for table in self._scan(columns):
            yield from table.to_batches(max_chunksize=batch_size)

    def to_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The whole version as one table (only ``columns`` if given)."""
        tables = list(self._scan(columns))
        return pa.concat_tables(tables) if tables else self._empty(columns)

    def head(self, n: int = 10, columns: Sequence[str] | None = None) -> pa.Table:
        """The first ``n`` rows."""
        return self.slice(0, n, columns)


class ArrayDataset(Dataset):
    """A committed array dataset: named Zarr v3 arrays (sharding codec) under the prefix."""

    @property
    def schema(self) -> None:
        """Array datasets have no table schema; see :attr:`arrays`."""
        return None

    @property
    def array_names(self) -> list[str]:
        """Names of the stored arrays."""
        return [a.name for a in self.manifest.arrays]

    def array(self, name: str) -> Any:
        """The named array opened read-only as a ``zarr.Array``."""
        from datastore.arrays import open_zarr_array

        for info in self.manifest.arrays:
            if info.name == name:
                return open_zarr_array(self.store, info)
        raise NotFound(f"array dataset {self.uri} has no array {name!r}; it has {self.array_names}")
