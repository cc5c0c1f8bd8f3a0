"""ArrayDatasetWriter / ArrayDataset on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from datastore import (
    ArrayDataset,
    ArrayDatasetWriter,
    InvalidInput,
    NotFound,
    StorageConfig,
    dataset_versions,
    open_dataset,
    open_store,
)


def test_append_roundtrip(root_uri: str, storage: StorageConfig | None) -> None:
    rng = np.random.default_rng(7)
    rows = rng.integers(0, 2**32 - 1, size=(1000, 128), dtype=np.uint32)
    with ArrayDatasetWriter(root_uri, config=storage, metadata={"seq_len": 128}) as w:
        w.create_array("input_ids", dtype="uint32", row_shape=(128,), chunk_rows=32, shard_rows=256)
        w.create_array("doc_offsets", dtype="int64", chunk_rows=512, shard_rows=1024)
        for start in range(0, 1000, 77):  # appends that do not line up with shards
            w.append("input_ids", rows[start : start + 77])
        w.append("doc_offsets", np.arange(0, 5000, 5))
    ds = open_dataset(root_uri, config=storage)
    assert isinstance(ds, ArrayDataset)
    assert len(ds) == 1000 and ds.array_names == ["input_ids", "doc_offsets"]
    np.testing.assert_array_equal(ds.array("input_ids")[:], rows)
    np.testing.assert_array_equal(ds.array("input_ids")[555], rows[555])
    np.testing.assert_array_equal(ds.array("doc_offsets")[:], np.arange(0, 5000, 5))
    info = ds.manifest.arrays[0]
    assert info.shape == [1000, 128] and info.chunks == [32, 128] and info.shards == [256, 128]
    shard_objects = [o for o in info.objects if "/c/" in o.path]
    assert len(shard_objects) == 4, "1000 rows in shards of 256 -> 4 shard objects"
    assert ds.manifest.metadata == {"seq_len": 128}
    result = ds.verify()
    assert result.ok and result.checked == len(ds.manifest.objects)
    with pytest.raises(NotFound, match="no array 'labels'"):
        ds.array("labels")


def test_bad_input_is_refused(root_uri: str, storage: StorageConfig | None) -> None:
    with pytest.raises(InvalidInput, match="must be a multiple"):
        ArrayDatasetWriter(root_uri, config=storage).create_array(
            "x", dtype="uint16", chunk_rows=3, shard_rows=10
        )
    with (
        pytest.raises(InvalidInput, match="rows must be"),
        ArrayDatasetWriter(root_uri, config=storage) as w,
    ):
        w.create_array("x", dtype="uint16", row_shape=(4,), chunk_rows=2, shard_rows=4)
        w.append("x", np.zeros((3, 5)))
    with (
        pytest.raises(InvalidInput, match="not declared"),
        ArrayDatasetWriter(root_uri, config=storage) as w,
    ):
        w.append("y", np.zeros(3))
    assert dataset_versions(root_uri, storage) == []
    assert not [o for o in open_store(root_uri, storage).list() if "_manifests" in o.key]
    assert list(open_store(root_uri, storage).list()) == [], "aborted arrays are removed"


def _read_in_child(arr: object, out: object) -> None:
    out.put(np.asarray(arr[100:300]).tolist())  # type: ignore[attr-defined,index]


def test_arrays_read_in_a_forked_child(root_uri: str, storage: StorageConfig | None) -> None:
    """A process forked after its parent read an array (a DataLoader worker after the training
    script opened a token dataset) reads it too. On S3 the parent's obstore runtime does not
    survive the fork: without the boto3 fallback the child hangs."""
    import multiprocessing as mp

    rows = np.arange(500 * 8, dtype=np.uint16).reshape(500, 8)
    with ArrayDatasetWriter(root_uri, config=storage) as w:
        w.create_array("x", dtype="uint16", row_shape=(8,), chunk_rows=16, shard_rows=64)
        w.append("x", rows)
    ds = open_dataset(root_uri, config=storage)
    assert isinstance(ds, ArrayDataset)
    arr = ds.array("x")
    np.testing.assert_array_equal(np.asarray(arr[0:10]), rows[0:10])  # the parent reads first
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(arr, out))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung reading the array")
    assert child.exitcode == 0
    assert out.get(timeout=5) == rows[100:300].tolist()
