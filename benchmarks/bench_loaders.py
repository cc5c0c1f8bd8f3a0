"""Loader benchmark (first part): ``loaders.StreamingDataset`` against raw-read floors on the
same data, local disk, 0 / 2 / 4 DataLoader workers.

Data (built once, cached under ``benchmarks/.data/``): the real-text corpus of
``ingest_corpus.py`` as a table dataset (text rows) and, tokenized with the built-in byte
tokenizer, a packed token dataset of 2,048-token rows (uint16, 4 KiB per row).

Cases:

* ``floor-memmap``: the token rows decoded once into one ``.npy`` file and read back through
  ``numpy.memmap`` in batches of 32 rows, sequentially: the raw-read floor for token rows.
* ``floor-arrow``: the text rows read back from uncompressed Arrow IPC files through
  ``pyarrow.memory_map``, batches of 32 rows taken sequentially and handed over as Python
  lists: the floor for text rows.
* ``ours-wN``: ``StreamingDataset`` (shuffled across all shards, batch 32) through
  ``StatefulLoader`` with ``N`` DataLoader workers, warm node cache (a first epoch fills it;
  its time is reported as the cold epoch).

Not in this run: the peers (MosaicML ``streaming`` and ``litdata``: their dependencies pin
versions of ``transformers``/``huggingface-hub``/``torchvision`` that conflict with this
project's environment, so they need their own virtual environment), S3 from SeaweedFS, and the
DALI GPU path. The results file says so.

Run: ``.venv/bin/python benchmarks/bench_loaders.py [--size 100MB]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from ingest_corpus import DATA, parse_size, real_corpus, size_label  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "loaders.md"
BATCH = 32


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare(size: int) -> dict[str, str]:
    import pyarrow as pa

    from datastore import DatasetWriter, open_dataset
    from pipelines.config import ExecutionConfig
    from pipelines.tokenize import TokenizeConfig, tokenize

    table = str(DATA / f"load-{size_label(size)}-text")
    tokens = str(DATA / f"load-{size_label(size)}-tokens")
    try:
        open_dataset(table)
    except Exception:
        shutil.rmtree(table, ignore_errors=True)
        corpus = real_corpus(size)
        texts = [json.loads(line)["text"] for line in corpus.path.open()]
        with DatasetWriter(table, shard_size=8 * 2**20) as w:
            w.write(pa.table({"text": texts}))
    try:
        open_dataset(tokens)
    except Exception:
        shutil.rmtree(tokens, ignore_errors=True)
        cfg = TokenizeConfig(seq_len=2048, execution=ExecutionConfig(progress=False))
        tokenize(table, tokens, cfg)
    return {"table": table, "tokens": tokens}


def run_floor_memmap(uri: str, scratch: Path) -> dict[str, Any]:
    import numpy as np

    from datastore.packed import open_packed

    path = scratch / "tokens.npy"
    packed = open_packed(uri)
    np.save(path, np.asarray(packed.tokens[:]))
    mm = np.load(path, mmap_mode="r")
    np.asarray(mm).sum()  # warm the page cache, as ours is warm
    start = time.perf_counter()
    rows = 0
    for i in range(0, mm.shape[0], BATCH):
        batch = np.array(mm[i : i + BATCH], dtype=np.int64)
        rows += batch.shape[0]
    wall = time.perf_counter() - start
    return {"samples": rows, "wall": wall, "bytes": rows * mm.shape[1] * 2}


def run_floor_arrow(uri: str, scratch: Path) -> dict[str, Any]:
    import pyarrow as pa

    from datastore import open_dataset

    ds = open_dataset(uri)
    files = []
    for i in range(len(ds.shards)):  # type: ignore[attr-defined]
        t = ds.read_shard(i, ["text"])  # type: ignore[attr-defined]
        path = scratch / f"{i}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, t.schema) as w:
            w.write_table(t)
        files.append(path)
    start = time.perf_counter()
    rows = nbytes = 0
    for path in files:
        t = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        for i in range(0, t.num_rows, BATCH):
            texts = t.slice(i, BATCH).column(0).to_pylist()
            rows += len(texts)
            nbytes += sum(len(x) for x in texts)
    wall = time.perf_counter() - start
    return {"samples": rows, "wall": wall, "bytes": nbytes}


def run_ours(uri: str, workers: int, scratch: Path, text: bool) -> dict[str, Any]:
    from loaders import StatefulLoader, StreamingDataset

    kwargs: dict[str, Any] = {"columns": ["text"]} if text else {}
    ds = StreamingDataset(uri, batch_size=BATCH, seed=0, cache_dir=str(scratch), **kwargs)
    loader = StatefulLoader(ds, num_workers=workers)

    def epoch() -> tuple[int, int, float, float]:
        start = time.perf_counter()
        first = 0.0
        rows = nbytes = 0
        for batch in loader:
            if not first:
                first = time.perf_counter() - start
            if text:
                rows += len(batch["text"])
                nbytes += sum(len(x) for x in batch["text"])
            else:
                rows += batch["input_ids"].shape[0]
                nbytes += batch["input_ids"].shape[0] * batch["input_ids"].shape[1] * 2
        return rows, nbytes, time.perf_counter() - start, first

    _, _, cold, cold_first = epoch()
    rows, nbytes, wall, first = epoch()
    return {
        "samples": rows,
        "wall": wall,
        "bytes": nbytes,
        "cold": cold,
        "first": first,
        "cold_first": cold_first,
        "cache_bytes": ds.cache.cached_bytes(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("100MB"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    spec = prepare(args.size)
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for kind, uri in (("tokens", spec["tokens"]), ("text", spec["table"])):
        text = kind == "text"
        cases: list[tuple[str, Any]] = [
            (
                "floor-arrow" if text else "floor-memmap",
                run_floor_arrow if text else run_floor_memmap,
            )
        ]
        cases += [(f"ours-w{w}", w) for w in (0, 2, 4)]
        for name, how in cases:
            scratch = Path(tempfile.mkdtemp(prefix="bench-load-", dir=DATA))
            try:
                log(f"{kind}: {name}")
                r = how(uri, scratch) if callable(how) else run_ours(uri, how, scratch, text)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            log(f"  {r['samples']:,} samples in {r['wall']:.2f} s")
            rows.append((kind, name, r))
    write(rows, args)
    return 0


def write(rows: list[tuple[str, str, dict[str, Any]]], args: argparse.Namespace) -> None:
    import psutil

    floors = {k: r for k, n, r in rows if n.startswith("floor")}
    lines = [
        "# Loader benchmark (first part: ours vs raw-read floors, local disk)",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: "
        f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"Python {platform.python_version()}. Command: `.venv/bin/python "
        f"benchmarks/bench_loaders.py --size {size_label(args.size)}`. Batch {BATCH}; ours "
        "shuffled across all shards; warm epoch (the cold one, which fills the cache, is "
        "listed too).",
        "",
        "| data | case | samples | warm s | samples/s | GB/s | ours/floor | first batch s "
        "| cold epoch s | cache MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, name, r in rows:
        rate = r["samples"] / r["wall"]
        floor = floors[kind]
        ratio = rate / (floor["samples"] / floor["wall"])
        lines.append(
            f"| {kind} | {name} | {r['samples']:,} | {r['wall']:.2f} | {rate:,.0f} | "
            f"{r['bytes'] / r['wall'] / 1e9:.2f} | {ratio:.2f}x | "
            f"{r.get('first', 0):.2f} | {r.get('cold', 0):.2f} | "
            f"{r.get('cache_bytes', 0) / 2**20:,.0f} |"
        )
    lines += [
        "",
        "Not measured in this run: MosaicML `streaming` and `litdata` (they need their own "
        "virtual environment: their dependencies conflict with this project's pins), reads "
        "from SeaweedFS S3 against raw boto3, and the DALI GPU path (no GPU host with DALI "
        "was available). The Loaders issue stays open for them.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
