"""Our shards open in tools nobody here wrote: DuckDB, Polars, zarr-python, tensorstore."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import tensorstore as ts
import zarr

from datastore import ArrayDatasetWriter, DatasetWriter, StorageConfig, TableDataset, open_dataset


def sample() -> pa.Table:
    n = 2000
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "text": [f"naïve café {i} " * (1 + i % 4) for i in range(n)],
            "score": pa.array([i / 7 for i in range(n)], pa.float64()),
        }
    )


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_duckdb_and_polars_read_table_shards(tmp_path: Path, fmt: str) -> None:
    uri = str(tmp_path / "ds")
    table = sample()
    with DatasetWriter(uri, format=fmt, shard_size=20_000, row_group_bytes=10_000) as w:
        w.write(table)
    ds = open_dataset(uri)
    assert isinstance(ds, TableDataset) and len(ds.shards) > 1
    files = [str(tmp_path / "ds" / s.path) for s in ds.shards]  # in manifest (row) order

    if fmt == "parquet":
        rel = duckdb.connect().sql(
            "SELECT id, text, score FROM read_parquet($files) ORDER BY id",
            params={"files": files},
        )
        assert rel.fetchall() == [tuple(r.values()) for r in table.to_pylist()]
        frame = pl.concat([pl.read_parquet(f) for f in files])
    else:
        # DuckDB has no offline Arrow IPC file reader; Polars reads the IPC files directly.
        frame = pl.concat([pl.read_ipc(f) for f in files])
    assert frame.to_arrow().to_pylist() == table.to_pylist()
    assert frame.height == sum(s.rows for s in ds.shards)


def test_polars_reads_shards_from_s3(s3_uri: str, s3_config: StorageConfig) -> None:
    table = sample()
    with DatasetWriter(s3_uri, shard_size=20_000, row_group_bytes=10_000, config=s3_config) as w:
        w.write(table)
    ds = open_dataset(s3_uri, config=s3_config)
    assert isinstance(ds, TableDataset)
    options = {
        "aws_endpoint_url": s3_config.endpoint_url or "",
        "aws_access_key_id": s3_config.access_key_id or "",
        "aws_secret_access_key": s3_config.secret_access_key or "",
        "aws_region": "us-east-1",
        "aws_allow_http": "true",
    }
    frames = [pl.read_parquet(f"{s3_uri}/{s.path}", storage_options=options) for s in ds.shards]
    assert pl.concat(frames).to_arrow().to_pylist() == table.to_pylist()


def test_zarr_and_tensorstore_read_arrays(tmp_path: Path) -> None:
    uri = str(tmp_path / "tokens")
    tokens = np.random.default_rng(0).integers(0, 50_000, size=(300, 64), dtype=np.uint16)
    emb = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
    with ArrayDatasetWriter(uri) as w:
        w.create_array("tokens", dtype="uint16", row_shape=(64,), chunk_rows=16, shard_rows=64)
        w.create_array("emb", dtype="float32", row_shape=(8,), chunk_rows=32, shard_rows=128)
        w.append("tokens", tokens[:123])
        w.append("tokens", tokens[123:])
        w.append("emb", emb)
    ds = open_dataset(uri)
    manifest = {a.name: a for a in ds.manifest.arrays}
    path = tmp_path / "tokens" / manifest["tokens"].path
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    assert meta["codecs"][0]["name"] == "sharding_indexed", "arrays use the sharding codec"

    plain = zarr.open_array(str(path), mode="r")
    np.testing.assert_array_equal(plain[:], tokens)
    store = ts.open(
        {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}, read=True
    ).result()
    np.testing.assert_array_equal(store.read().result(), tokens)
    emb_path = tmp_path / "tokens" / manifest["emb"].path
    np.testing.assert_array_equal(zarr.open_array(str(emb_path), mode="r")[:], emb)
    assert manifest["tokens"].shape == [300, 64] and manifest["tokens"].shards == [64, 64]
