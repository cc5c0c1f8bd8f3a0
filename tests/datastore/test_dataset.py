"""DatasetWriter and open_dataset on every backend: round trips, shards, versions, commits."""

from __future__ import annotations

import os
import threading

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datastore import (
    DatasetWriter,
    InvalidInput,
    NotFound,
    ParentRef,
    StorageConfig,
    TableDataset,
    VersionConflict,
    dataset_versions,
    open_dataset,
    open_store,
)
from datastore._s3 import S3Store


def corpus(n: int, start: int = 0) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(start, start + n), pa.int64()),
            "text": [f"document {i} " + "é∑ word " * (i % 7) for i in range(start, start + n)],
            "score": [float(i) / 3 for i in range(start, start + n)],
        }
    )


def open_table(uri: str, storage: StorageConfig | None, version: int | None = None) -> TableDataset:
    ds = open_dataset(uri, version, config=storage)
    assert isinstance(ds, TableDataset)
    return ds


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_roundtrip_rolls_shards(root_uri: str, storage: StorageConfig | None, fmt: str) -> None:
    table = corpus(5000)
    with DatasetWriter(
        root_uri, format=fmt, shard_size=20_000, row_group_bytes=10_000, config=storage
    ) as w:
        for batch in table.to_batches(max_chunksize=333):
            w.write(batch)
    ds = open_table(root_uri, storage)
    assert ds.version == 1
    assert len(ds) == 5000
    assert len(ds.shards) >= 3, "small shard_size must roll over into several shards"
    assert all(s.bytes >= 20_000 for s in ds.shards[:-1]), (
        "a shard closes once it reaches the target"
    )
    assert sum(s.rows for s in ds.shards) == 5000
    assert ds.format == fmt
    assert ds.schema.equals(table.schema)
    assert ds.to_table().equals(table)
    assert all(s.path.endswith("." + fmt) for s in ds.shards)
    assert ds.verify().ok


def test_random_access_slices_projection(root_uri: str, storage: StorageConfig | None) -> None:
    table = corpus(3000)
    with DatasetWriter(root_uri, shard_size=15_000, row_group_bytes=5_000, config=storage) as w:
        w.write(table)
    ds = open_table(root_uri, storage)
    for i in (0, 1, 999, 1000, 2999, -1):
        assert ds[i] == table.slice(i % 3000, 1).to_pylist()[0]
    assert ds[100:2100].equals(table.slice(100, 2000))
    assert ds[10:20:3].to_pylist() == table.take([10, 13, 16, 19]).to_pylist()
    assert ds.to_table(columns=["text"]).equals(table.select(["text"]))
    assert ds.slice(2990, 5000, columns=["id"]).column("id").to_pylist() == list(range(2990, 3000))
    assert ds.take([2999, 0, 1500]).column("id").to_pylist() == [2999, 0, 1500]
    batches = list(ds.iter_batches(columns=["id"], batch_size=128))
    assert max(b.num_rows for b in batches) <= 128
    assert pa.Table.from_batches(batches).column("id").to_pylist() == list(range(3000))
    assert ds.head(3).num_rows == 3
    with pytest.raises(IndexError):
        ds[3000]
    with pytest.raises(InvalidInput, match="nope"):
        ds.to_table(columns=["nope"])


def test_column_stats_in_manifest(root_uri: str, storage: StorageConfig | None) -> None:
    # row_group_bytes=1: each write is its own row group, so per-group stats get merged.
    with DatasetWriter(root_uri, shard_size=10**9, row_group_bytes=1, config=storage) as w:
        w.write(pa.table({"x": [3, None, 7, -2], "s": ["b", "a", None, "c"]}))
        w.write(pa.table({"x": [100, 5], "s": ["z" * 100, "d"]}))
    stats = open_table(root_uri, storage).shards[0].stats
    assert stats["x"] == {"min": -2, "max": 100, "null_count": 1, "values": 5}
    # "z" * 100 is longer than the 64-character limit: its row group has no exact bounds, so the
    # shard's bounds are omitted rather than wrong.
    assert stats["s"] == {"null_count": 1, "values": 5}


def test_versions_and_parents(root_uri: str, storage: StorageConfig | None) -> None:
    for n in (10, 20, 30):
        with DatasetWriter(
            root_uri, config=storage, parents=[ParentRef("s3://src/raw", 4)], metadata={"n": n}
        ) as w:
            w.write(corpus(n))
    assert dataset_versions(root_uri, storage) == [1, 2, 3]
    assert len(open_table(root_uri, storage)) == 30
    old = open_table(root_uri, storage, version=1)
    assert len(old) == 10 and old.manifest.metadata == {"n": 10}
    assert old.manifest.parents == [ParentRef("s3://src/raw", 4)]
    with pytest.raises(NotFound, match=r"no version 9.*\[1, 2, 3\]"):
        open_dataset(root_uri, 9, config=storage)


def test_missing_dataset_is_not_found(root_uri: str, storage: StorageConfig | None) -> None:
    with pytest.raises(NotFound, match="was it committed"):
        open_dataset(root_uri, config=storage)


def test_exception_commits_nothing(root_uri: str, storage: StorageConfig | None) -> None:
    with (
        pytest.raises(RuntimeError),
        DatasetWriter(root_uri, shard_size=2_000, row_group_bytes=1_000, config=storage) as w,
    ):
        w.write(corpus(2000))
        raise RuntimeError("job died")
    assert dataset_versions(root_uri, storage) == []
    assert list(open_store(root_uri, storage).list()) == [], "aborted shards are removed"
    if storage is None:  # no hidden temporaries of the shard that was being streamed
        assert [f for _, _, files in os.walk(root_uri) for f in files] == []
    else:
        store = open_store(root_uri, storage)
        assert isinstance(store, S3Store)
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket)
        assert [
            u for u in uploads.get("Uploads", []) if u["Key"].startswith(store.location.path)
        ] == []


def test_explicit_version_conflict(root_uri: str, storage: StorageConfig | None) -> None:
    with DatasetWriter(root_uri, version=1, config=storage) as w:
        w.write(corpus(5))
    with (
        pytest.raises(VersionConflict, match=r"version 1 .* another writer"),
        DatasetWriter(root_uri, version=1, config=storage) as w,
    ):
        w.write(corpus(7))
    assert len(open_table(root_uri, storage, 1)) == 5


def test_concurrent_writers_same_version_one_wins(
    root_uri: str, storage: StorageConfig | None
) -> None:
    writers = [DatasetWriter(root_uri, version=1, config=storage) for _ in range(6)]
    for i, w in enumerate(writers):
        w.write(corpus(10 + i))
    barrier = threading.Barrier(len(writers))
    outcomes: list[str] = []

    def commit(w: DatasetWriter) -> None:
        barrier.wait()
        try:
            w.commit()
            outcomes.append("won")
        except VersionConflict:
            outcomes.append("lost")

    threads = [threading.Thread(target=commit, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost"] * 5 + ["won"]
    ds = open_table(root_uri, storage, 1)
    assert ds.verify().ok and len(ds) in range(10, 16)


def test_concurrent_auto_version_writers_all_land(
    root_uri: str, storage: StorageConfig | None
) -> None:
    writers = [DatasetWriter(root_uri, config=storage) for _ in range(4)]
    for i, w in enumerate(writers):
        w.write(corpus(1 + i))
    threads = [threading.Thread(target=w.commit) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert dataset_versions(root_uri, storage) == [1, 2, 3, 4]
    sizes = sorted(len(open_table(root_uri, storage, v)) for v in (1, 2, 3, 4))
    assert sizes == [1, 2, 3, 4]


def test_schema_mismatch_is_clear(root_uri: str, storage: StorageConfig | None) -> None:
    with (
        pytest.raises(InvalidInput, match="does not match the dataset schema"),
        DatasetWriter(root_uri, config=storage) as w,
    ):
        w.write(corpus(3))
        w.write(pa.table({"id": ["not", "an", "int"]}))
    assert dataset_versions(root_uri, storage) == []


def test_compatible_batches_are_cast(root_uri: str, storage: StorageConfig | None) -> None:
    schema = pa.schema([("id", pa.int64()), ("text", pa.large_string())])
    with DatasetWriter(root_uri, schema=schema, config=storage) as w:
        w.write(pa.table({"text": ["a", "b"], "id": pa.array([1, 2], pa.int32())}))
    ds = open_table(root_uri, storage)
    assert ds.schema.equals(schema) and ds[1] == {"id": 2, "text": "b"}


def test_empty_dataset_with_schema(root_uri: str, storage: StorageConfig | None) -> None:
    schema = pa.schema([("id", pa.int64())])
    with DatasetWriter(root_uri, schema=schema, config=storage):
        pass
    ds = open_table(root_uri, storage)
    assert len(ds) == 0 and ds.shards == [] and ds.to_table().schema.equals(schema)


def test_nothing_written_without_schema_is_refused(tmp_path: object) -> None:
    with pytest.raises(InvalidInput, match="no schema"), DatasetWriter(str(tmp_path)):
        pass


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(st.integers(-(2**63), 2**63 - 1), st.one_of(st.none(), st.text(max_size=40))),
        max_size=300,
    ),
    shard_size=st.integers(200, 20_000),
    chunk=st.integers(1, 50),
    fmt=st.sampled_from(["parquet", "arrow"]),
)
def test_roundtrip_property(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[int, str | None]],
    shard_size: int,
    chunk: int,
    fmt: str,
) -> None:
    uri = str(tmp_path_factory.mktemp("prop"))
    table = pa.table(
        {
            "k": pa.array([r[0] for r in rows], pa.int64()),
            "v": pa.array([r[1] for r in rows], pa.string()),
        }
    )
    with DatasetWriter(
        uri, schema=table.schema, format=fmt, shard_size=shard_size, row_group_bytes=100
    ) as w:
        for batch in table.to_batches(max_chunksize=chunk):
            w.write(batch)
    ds = open_table(uri, None)
    assert ds.to_table().equals(table)
    assert [ds[i] for i in range(len(ds))] == table.to_pylist()
    assert ds.verify().ok


def test_nanosecond_timestamps_get_iso_stats(tmp_path: object) -> None:
    ts = pa.array([1_700_000_000_123_456_789, 1_600_000_000_000_000_001], pa.timestamp("ns"))
    with DatasetWriter(str(tmp_path)) as w:
        w.write(pa.table({"t": ts}))
    stats = open_table(str(tmp_path), None).shards[0].stats["t"]
    assert stats["min"].startswith("2020-09-13") and stats["min"].endswith("001")
    assert stats["max"].endswith("123456789")


def test_version_zero_is_refused(tmp_path: object) -> None:
    from datastore import Unsupported

    with (
        pytest.raises(Unsupported, match="start at 1"),
        DatasetWriter(str(tmp_path), version=0) as w,
    ):
        w.write(corpus(1))
    assert list(open_store(str(tmp_path)).list()) == []


def test_unencodable_metadata_commits_nothing_and_cleans_up(tmp_path: object) -> None:
    with pytest.raises(ValueError), DatasetWriter(str(tmp_path), metadata={"x": float("nan")}) as w:
        w.write(corpus(3))
    assert list(open_store(str(tmp_path)).list()) == []
