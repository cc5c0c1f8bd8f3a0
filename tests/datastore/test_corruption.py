"""Damaged data is named, never returned: truncation, bit flips, foreign and newer manifests."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from datastore import (
    ArrayDatasetWriter,
    Corrupt,
    DatasetWriter,
    NotFound,
    StorageConfig,
    TableDataset,
    Unsupported,
    open_dataset,
    open_store,
)
from datastore.manifest import manifest_key


def write(uri: str, storage: StorageConfig | None, fmt: str = "parquet") -> TableDataset:
    table = pa.table({"id": list(range(4000)), "text": [f"row {i} " * 5 for i in range(4000)]})
    with DatasetWriter(
        uri, format=fmt, shard_size=20_000, row_group_bytes=8_000, config=storage
    ) as w:
        w.write(table)
    ds = open_dataset(uri, config=storage)
    assert isinstance(ds, TableDataset) and len(ds.shards) >= 2
    return ds


def damage(uri: str, storage: StorageConfig | None, key: str, how: str) -> None:
    store = open_store(uri, storage)
    data = bytearray(store.get(key))
    if how == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01  # one bit, in the middle of the data pages
    store.put(key, bytes(data))


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
@pytest.mark.parametrize("how", ["truncate", "bitflip"])
def test_damaged_shard_is_named_by_verify_and_read(
    root_uri: str, storage: StorageConfig | None, fmt: str, how: str
) -> None:
    ds = write(root_uri, storage, fmt)
    bad = ds.shards[1]
    damage(root_uri, storage, bad.path, how)

    result = open_dataset(root_uri, config=storage).verify()
    assert not result.ok
    assert len(result.problems) == 1 and bad.path in result.problems[0]

    fresh = open_dataset(root_uri, config=storage)
    assert isinstance(fresh, TableDataset)
    assert fresh[0]["id"] == 0, "an intact shard still reads"
    with pytest.raises(Corrupt, match=bad.path):
        fresh.to_table()
    with pytest.raises(Corrupt, match=bad.path):
        fresh[ds.shards[0].rows]  # first row of the damaged shard


def test_bitflip_caught_by_format_checks_without_checksum(tmp_path: object) -> None:
    """With verify_reads off, Parquet page CRCs still refuse a flipped data page."""
    uri = str(tmp_path)
    ds = write(uri, None, "parquet")
    damage(uri, None, ds.shards[0].path, "bitflip")
    fast = open_dataset(uri, verify_reads=False)
    assert isinstance(fast, TableDataset)
    with pytest.raises(Corrupt, match=ds.shards[0].path):
        fast.read_shard(0)


def test_deleted_shard_is_not_found(root_uri: str, storage: StorageConfig | None) -> None:
    ds = write(root_uri, storage)
    open_store(root_uri, storage).delete(ds.shards[0].path)
    with pytest.raises(NotFound, match="deleted under the reader"):
        ds.read_shard(0)
    assert "does not exist" in ds.verify().problems[0]


def test_newer_format_version_is_refused(root_uri: str, storage: StorageConfig | None) -> None:
    write(root_uri, storage)
    store = open_store(root_uri, storage)
    doc = json.loads(store.get(manifest_key(1)))
    doc["format_version"] = 99
    store.put(manifest_key(2), json.dumps(doc).encode())
    with pytest.raises(Unsupported, match=r"format version 99.*upgrade shardyard"):
        open_dataset(root_uri, config=storage)
    assert open_dataset(root_uri, 1, config=storage).version == 1


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"format": "delta"}', "not a Shardyard manifest"),
        (b'{"format": "shardyard.dataset", "format_version": 1, "kind": "table"}', "malformed"),
    ],
)
def test_broken_manifest_is_corrupt(tmp_path: object, body: bytes, match: str) -> None:
    store = open_store(str(tmp_path))
    store.put(manifest_key(1), body)
    with pytest.raises(Corrupt, match=match):
        open_dataset(str(tmp_path))


def test_manifest_under_wrong_version_key_is_corrupt(tmp_path: object) -> None:
    uri = str(tmp_path)
    write(uri, None)
    store = open_store(uri)
    store.put(manifest_key(5), store.get(manifest_key(1)))
    with pytest.raises(Corrupt, match="says it is version 1"):
        open_dataset(uri)


def test_array_bitflip_named_by_verify_and_read(
    root_uri: str, storage: StorageConfig | None
) -> None:
    with ArrayDatasetWriter(root_uri, config=storage) as w:
        w.create_array("tokens", dtype="uint16", row_shape=(32,), chunk_rows=8, shard_rows=32)
        w.append("tokens", np.arange(32 * 100, dtype=np.uint16).reshape(100, 32))
    ds = open_dataset(root_uri, config=storage)
    victim = ds.manifest.arrays[0].objects[1]
    assert "/c/" in victim.path, "the second object is a shard, not metadata"
    damage(root_uri, storage, victim.path, "bitflip")
    problems = open_dataset(root_uri, config=storage).verify().problems
    assert len(problems) == 1 and victim.path in problems[0]
    arr = open_dataset(root_uri, config=storage).array("tokens")  # type: ignore[union-attr]
    with pytest.raises(Exception, match=r"(?i)crc|checksum"):
        arr[:]


def test_unknown_kind_and_checksum_algorithm_are_unsupported(tmp_path: object) -> None:
    uri = str(tmp_path)
    write(uri, None)
    store = open_store(uri)
    doc = json.loads(store.get(manifest_key(1)))
    store.put(manifest_key(2), json.dumps({**doc, "kind": "graph"}).encode())
    with pytest.raises(Unsupported, match="unknown kind 'graph'"):
        open_dataset(uri)
    doc["shards"][0]["checksum"] = "blake3:abcd"
    doc["version"] = 3
    store.put(manifest_key(3), json.dumps(doc).encode())
    ds = open_dataset(uri, 3)
    assert isinstance(ds, TableDataset)
    with pytest.raises(Unsupported, match="checksum 'blake3'"):
        ds.read_shard(0)


def test_unknown_keys_from_a_later_minor_revision_are_ignored(tmp_path: object) -> None:
    uri = str(tmp_path)
    write(uri, None)
    store = open_store(uri)
    doc = json.loads(store.get(manifest_key(1)))
    doc["version"] = 2
    doc["future_top_level"] = {"x": 1}
    for shard in doc["shards"]:
        shard["future_field"] = "ignored"
    doc["created"]["future"] = True
    store.put(manifest_key(2), json.dumps(doc).encode())
    ds = open_dataset(uri)
    assert isinstance(ds, TableDataset) and ds.version == 2 and len(ds) == 4000
