"""What `make demo` runs: the bundled corpus becomes a committed dataset on the local store.

Grows as capabilities land; today it exercises the storage layer and the dataset format:
a Parquet table dataset, a second version in Arrow IPC, and a Zarr array dataset of
byte-level token rows. The Makefile then inspects them with the `shardyard` CLI.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.json as pj

from datastore import ArrayDatasetWriter, DatasetWriter, ParentRef, TableDataset, open_dataset

CORPUS = Path(__file__).parent / "corpus" / "docs.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(".demo"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    corpus_uri = str(args.workdir / "corpus")
    tokens_uri = str(args.workdir / "tokens")

    t0 = time.perf_counter()
    table = pj.read_json(CORPUS)
    with DatasetWriter(corpus_uri, shard_size=512 * 1024, metadata={"source": CORPUS.name}) as w:
        w.write(table)
    with DatasetWriter(corpus_uri, format="arrow", shard_size=512 * 1024) as w:
        w.write(table)
    ds = open_dataset(corpus_uri)
    assert isinstance(ds, TableDataset)
    print(
        f"wrote {corpus_uri}: {len(ds):,} documents in {len(ds.shards)} Arrow shards "
        f"(v{ds.version}; v1 is Parquet) in {time.perf_counter() - t0:.2f}s"
    )

    # Byte-level "tokens" packed into rows of 256, as the tokenizer will write them.
    seq_len = 256
    stream = np.frombuffer("\n".join(table.column("text").to_pylist()).encode(), np.uint8)
    rows = stream[: len(stream) // seq_len * seq_len].reshape(-1, seq_len).astype(np.uint16)
    with ArrayDatasetWriter(
        tokens_uri, parents=[ParentRef(ds.uri, ds.version)], metadata={"seq_len": seq_len}
    ) as aw:
        aw.create_array(
            "input_ids", dtype="uint16", row_shape=(seq_len,), chunk_rows=64, shard_rows=1024
        )
        aw.append("input_ids", rows)
    arrays = open_dataset(tokens_uri)
    print(f"wrote {tokens_uri}: {len(arrays):,} rows x {seq_len} tokens (Zarr v3, sharded)")
    result = arrays.verify()
    status = "ok" if result.ok else "; ".join(result.problems)
    print(f"verified {result.checked} objects, {result.bytes:,} bytes: {status}")


if __name__ == "__main__":
    main()
