"""Tokenization benchmark: ``pipelines.tokenize`` vs. the tokenizer's own floor and HF
``datasets`` ``.map(batched=True)``, side by side in one run on the same real-text dataset.

Data: the real-text corpus of ``ingest_corpus.py`` (man pages, ``/usr/share/doc``, Python
sources on this machine), written once as a Shardyard table dataset (Parquet, zstd). Tokenizer:
a 32,000-id byte-level BPE trained with ``shardyard tokenizer train`` on the first 20 MB of it
(the same ``tokenizer.json`` for every case). Both are cached under ``benchmarks/.data/``.

Cases (each in a fresh Python process pinned to CPU ``--cpu``, ``RAYON_NUM_THREADS=1`` and
``TOKENIZERS_PARALLELISM=false``, so every number is one core's work):

* ``floor-batch``: ``Tokenizer.encode_batch`` over the texts, already in memory as Python
  strings, 1,000 per call; no I/O, no packing. The issue's floor.
* ``floor-fast``: the same with ``encode_batch_fast`` (no character offsets).
* ``floor-fastokens``: ``fastokens`` (the engine our job uses by default: the same
  ``tokenizer.json``, the same ids) ``encode_batch_flat`` over the same in-memory strings: the
  floor for our engine.
* ``datasets-fast``: ``datasets.Dataset.from_parquet`` (outside the timing), then ``.map(batched=
  True, batch_size=1000)`` returning ``input_ids`` from ``encode_batch_fast``, writing its Arrow
  cache file.
* ``datasets-fastokens``: the same ``.map`` with fastokens as the tokenizer, so that the
  pipelines are compared with the same engine.
* ``datasets-transformers``: the usual recipe, ``PreTrainedTokenizerFast(tokenizer_file=...)``
  called on each batch (input_ids + attention_mask) in ``.map(batched=True)``.
* ``ours``: ``pipelines.tokenize`` (LocalCluster with one worker process; the scheduler, client
  and worker all share the one core), reading the Parquet shards, tokenizing (engine ``auto``:
  fastokens, spot-checked against ``tokenizers``), packing into 2,048-token rows and writing
  the Zarr arrays (zstd + CRC32C), then committing. Cluster start-up is inside the timing.
* ``ours-tokenizers``: the same job forced onto the reference engine (``--engine
  tokenizers``): our pipeline's cost around the very same tokenizer calls as the HF cases.
* ``ours-2cores``: ``ours`` with two workers on two cores (tokens/s divided by 2 per core).

Every case runs ``--reps`` times, the cases interleaved (round robin), and the table gives the
median wall time.

Tokens/s counts document tokens (no EOS, no padding); every case must count the same number.
Wall time is measured in the child around the work alone; peak RSS is the child's process tree
sampled every 50 ms.

Run: ``.venv/bin/python benchmarks/bench_tokenize.py [--size 100MB] [--cpu 1]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from ingest_corpus import DATA, parse_size, real_corpus, size_label  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "tokenize.md"
VOCAB = 32_000
SEQ_LEN = 2048
CASES = [
    "floor-batch",
    "floor-fast",
    "floor-fastokens",
    "datasets-fast",
    "datasets-fastokens",
    "datasets-transformers",
    "ours",
    "ours-tokenizers",
    "ours-2cores",
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- data ----------------------------------------------------------------------------------------


def prepare(size: int) -> dict[str, str]:
    """The table dataset and the tokenizer (built once, cached)."""
    import pyarrow as pa

    from datastore import DatasetWriter, open_dataset
    from pipelines.tokenizer import train_tokenizer

    corpus = real_corpus(size)
    uri = str(DATA / f"tok-{size_label(size)}-dataset")
    try:
        open_dataset(uri)
    except Exception:
        shutil.rmtree(uri, ignore_errors=True)
        log(f"writing {corpus.path.name} as a table dataset")
        texts = [json.loads(line)["text"] for line in corpus.path.open()]
        with DatasetWriter(uri, shard_size=8 * 2**20) as w:  # a few shards: parallel tasks
            w.write(pa.table({"text": texts}))
    tok = DATA / f"tok-bpe{VOCAB}.json"
    if not tok.exists():
        sample = str(DATA / "tok-sample-dataset")
        shutil.rmtree(sample, ignore_errors=True)
        texts, n = [], 0
        for line in real_corpus(parse_size("20MB")).path.open():
            texts.append(json.loads(line)["text"])
            n += len(texts[-1])
        with DatasetWriter(sample) as w:
            w.write(pa.table({"text": texts}))
        log("training the 32k BPE tokenizer on 20 MB")
        train_tokenizer(sample, str(tok), VOCAB)
    return {"dataset": uri, "tokenizer": str(tok)}


# -- cases (run in the child) --------------------------------------------------------------------


def _texts(dataset: str) -> list[str]:
    from datastore import open_dataset

    ds = open_dataset(dataset)
    return [t or "" for t in ds.to_table(["text"]).column(0).to_pylist()]


def case_floor(spec: dict[str, Any], engine: str) -> dict[str, Any]:
    texts = _texts(spec["dataset"])
    if engine == "fastokens":
        import fastokens

        ft = fastokens.Tokenizer.from_file(spec["tokenizer"])
        mark("start")
        t = time.perf_counter()
        tokens = 0
        for i in range(0, len(texts), 1000):
            flat, _ = ft.encode_batch_flat(
                texts[i : i + 1000], add_special_tokens=False, split_special_tokens=True
            )
            tokens += len(flat) // 4
        wall = time.perf_counter() - t
        mark("stop")
        return {"tokens": tokens, "wall": wall}
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(spec["tokenizer"])
    tok.encode_special_tokens = True  # as ours: text never becomes a control token
    encode = tok.encode_batch_fast if engine == "fast" else tok.encode_batch
    mark("start")
    t = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), 1000):
        tokens += sum(len(e) for e in encode(texts[i : i + 1000], add_special_tokens=False))
    wall = time.perf_counter() - t
    mark("stop")
    return {"tokens": tokens, "wall": wall}


def case_datasets(spec: dict[str, Any], recipe: str, scratch: Path) -> dict[str, Any]:
    import datasets
    from tokenizers import Tokenizer

    from datastore import open_dataset

    datasets.disable_progress_bars()
    files = [
        open_dataset(spec["dataset"]).store.location.join(s.path).path
        for s in open_dataset(spec["dataset"]).shards
    ]
    ds = datasets.Dataset.from_parquet(files, cache_dir=str(scratch / "hf-cache"))
    if recipe == "fast":
        tok = Tokenizer.from_file(spec["tokenizer"])
        tok.encode_special_tokens = True

        def fn(batch: dict[str, list[Any]]) -> dict[str, Any]:
            enc = tok.encode_batch_fast([t or "" for t in batch["text"]], add_special_tokens=False)
            return {"input_ids": [e.ids for e in enc]}
    elif recipe == "fastokens":
        import fastokens
        import numpy as np

        ft = fastokens.Tokenizer.from_file(spec["tokenizer"])

        def fn(batch: dict[str, list[Any]]) -> dict[str, Any]:
            flat, offsets = ft.encode_batch_flat(
                [t or "" for t in batch["text"]],
                add_special_tokens=False,
                split_special_tokens=True,
            )
            ids = np.frombuffer(flat, np.uint32)
            bounds = np.frombuffer(offsets, np.uint64).astype(np.int64)
            return {"input_ids": [ids[a:b] for a, b in itertools.pairwise(bounds)]}
    else:
        from transformers import PreTrainedTokenizerFast

        ptf = PreTrainedTokenizerFast(tokenizer_file=spec["tokenizer"])

        def fn(batch: dict[str, list[Any]]) -> dict[str, Any]:
            return dict(ptf([t or "" for t in batch["text"]]))

    mark("start")
    t = time.perf_counter()
    out = ds.map(
        fn,
        batched=True,
        batch_size=1000,
        remove_columns=ds.column_names,
        cache_file_name=str(scratch / "tokenized.arrow"),
    )
    wall = time.perf_counter() - t
    mark("stop")
    import pyarrow.compute as pc

    tokens = int(pc.sum(pc.list_value_length(out.data.column("input_ids"))).as_py())
    return {"tokens": tokens, "wall": wall}


def case_ours(spec: dict[str, Any], workers: int, engine: str, scratch: Path) -> dict[str, Any]:
    from pipelines.config import ExecutionConfig
    from pipelines.tokenize import TokenizeConfig, tokenize
    from pipelines.tokenizer import TokenizerSpec

    config = TokenizeConfig(
        tokenizer=TokenizerSpec(spec["tokenizer"], engine=engine),
        seq_len=SEQ_LEN,
        execution=ExecutionConfig(workers=workers, progress=False),
    )
    mark("start")
    t = time.perf_counter()
    report = tokenize(spec["dataset"], str(scratch / "tokens"), config)
    wall = time.perf_counter() - t
    mark("stop")
    return {
        "tokens": report.document_tokens,
        "wall": wall,
        "rows": report.rows,
        "pad_fraction": report.pad_fraction,
        "engine": report.engine,
        "timings": report.timings,
        "stored_bytes": sum(
            p.stat().st_size for p in (scratch / "tokens").rglob("*") if p.is_file()
        ),
    }


def mark(what: str) -> None:
    print(f"@@{what}", flush=True)


def child_main(spec: dict[str, Any]) -> int:
    scratch = Path(spec["scratch"])
    case = spec["case"]
    if case.startswith("floor"):
        result = case_floor(spec, case.split("-", 1)[1])
    elif case.startswith("datasets"):
        result = case_datasets(spec, case.split("-", 1)[1], scratch)
    else:
        engine = "tokenizers" if case == "ours-tokenizers" else "auto"
        result = case_ours(spec, 2 if case == "ours-2cores" else 1, engine, scratch)
    print("@@result " + json.dumps(result), flush=True)
    return 0


# -- parent ----------------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Peak RSS of a process tree, sampled every 50 ms while marked started."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.active, self.done = pid, 0, False, False

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self.done:
            if self.active:
                try:
                    procs = [root, *root.children(recursive=True)]
                    rss = sum(p.memory_info().rss for p in procs if p.is_running())
                    self.peak = max(self.peak, rss)
                except psutil.Error:
                    pass
            time.sleep(0.05)


def run_case(case: str, spec: dict[str, Any], cpus: set[int]) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-tok-{case}-", dir=DATA))
    env = dict(os.environ)
    env.update(
        RAYON_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO),
        HF_DATASETS_OFFLINE="1",
    )
    child = {**spec, "case": case, "scratch": str(scratch)}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(child)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    sampler = Sampler(proc.pid)
    sampler.start()
    result: dict[str, Any] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("@@start"):
            sampler.active = True
        elif line.startswith("@@stop"):
            sampler.active = False
        elif line.startswith("@@result "):
            result = json.loads(line[len("@@result ") :])
    proc.wait()
    sampler.done = True
    shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode or not result:
        raise SystemExit(f"case {case} failed (exit {proc.returncode})")
    result["peak_rss"] = sampler.peak
    result["cores"] = len(cpus)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=parse_size, default=parse_size("100MB"))
    ap.add_argument("--cpu", type=int, default=1, help="CPU the one-core cases are pinned to")
    ap.add_argument("--only", nargs="*", choices=CASES, default=CASES)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--reps", type=int, default=3, help="runs per case (median reported)")
    args = ap.parse_args()
    if args.child:
        return child_main(json.loads(args.child))
    DATA.mkdir(parents=True, exist_ok=True)
    spec = prepare(args.size)
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in args.only}
    for rep in range(args.reps):
        for case in args.only:
            cpus = {0, 1} if case == "ours-2cores" else {args.cpu}
            log(f"{case} on CPUs {sorted(cpus)} (run {rep + 1}/{args.reps})")
            r = run_case(case, spec, cpus)
            r["per_core"] = r["tokens"] / r["wall"] / r["cores"]
            runs[case].append(r)
            log(
                f"  {r['tokens']:,} tokens in {r['wall']:.2f} s = {r['per_core']:,.0f} tokens/s "
                f"per core, peak {r['peak_rss'] / 2**20:,.0f} MiB"
            )
    results = {}
    for case, rs in runs.items():
        walls = sorted(r["wall"] for r in rs)
        median = sorted(rs, key=lambda r: r["wall"])[len(rs) // 2]
        results[case] = {**median, "walls": walls}
    write_table(results, args, spec)
    return 0


def write_table(
    results: dict[str, dict[str, Any]], args: argparse.Namespace, spec: dict[str, str]
) -> None:
    import pyarrow.compute as pc

    from datastore import open_dataset

    ds = open_dataset(spec["dataset"])
    text_bytes = int(pc.sum(pc.binary_length(ds.to_table(["text"]).column(0))).as_py())
    counts = {r["tokens"] for r in results.values()}
    ours = results.get("ours", {}).get("per_core")

    def ratio(name: str) -> str:
        theirs = results.get(name, {}).get("per_core")
        return f"{ours / theirs:.2f}x" if ours and theirs else "-"

    import psutil

    lines = [
        "# Tokenization benchmark",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: "
        f"{psutil.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}.",
        f"Command: `.venv/bin/python benchmarks/bench_tokenize.py --size {size_label(args.size)}"
        f" --cpu {args.cpu}`",
        "",
        f"Data: real text (`ingest_corpus.py real`, {size_label(args.size)}, {len(ds):,} "
        f"documents, {text_bytes:,} bytes of UTF-8 in {len(ds.shards)} shards); tokenizer: "
        f"32,000-id byte-level BPE trained by `shardyard tokenizer train`; ours packs "
        f"{SEQ_LEN}-token rows. "
        "Token counts agree across cases: "
        + ("yes" if len(counts) == 1 else f"NO {sorted(counts)}")
        + ".",
        "",
        f"| case | cores | document tokens | wall s (median of {args.reps}) | runs s | "
        "tokens/s per core | ours/this | peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['cores']} | {r['tokens']:,} | {r['wall']:.2f} | "
            f"{', '.join(f'{w:.2f}' for w in r['walls'])} | {r['per_core']:,.0f} | "
            f"{ratio(name) if name != 'ours' else '1.00x'} | {r['peak_rss'] / 2**20:,.0f} |"
        )
    if "ours" in results:
        o = results["ours"]
        lines += [
            "",
            f"Ours: engine {o['engine']}, {o['rows']:,} rows, pad fraction {o['pad_fraction']}, "
            f"{o['stored_bytes'] / 2**20:,.1f} MiB stored; phases {o['timings']}.",
        ]
    lines += [
        "",
        "Goals (issue 4): ours >= 0.8x the floor per core (`floor-batch`), >= 1.5x `datasets`.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
