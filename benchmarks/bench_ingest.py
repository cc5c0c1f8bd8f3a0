"""Ingestion benchmark: ``pipelines.ingest`` vs. HF datasets, datatrove, datasketch, rensa and a
pyarrow floor, side by side in one run on the same JSONL corpora, one core each.

Works (input: one JSONL file of ``{"id", "text", "url"}`` records; output: Parquet, zstd where
the implementation lets one choose):

* **(a) parse + normalize + filter + write**, in two variants. Both: Unicode NFC, control
  characters removed, runs of spaces/tabs collapsed, lines trimmed, at most one blank line; then
  Gopher rules at datatrove's default thresholds, restricted to the rules our ``FilterConfig``
  has (see ``gopher_kwargs``); the kept documents written as Parquet.

  - work ``q``: the Gopher *quality* rules only (words 50..100k, mean word length 3..10,
    '#'/ellipsis per word <= 0.1, alphabetic words >= 0.8): the like-for-like reading of the
    issue, whose peer numbers (15-19 MiB/s per core) only such light filtering reaches;
  - work ``a``: the quality rules *and* the Gopher repetition rules (duplicate lines, top
    2/3/4-gram and duplicate 5..10-gram character fractions), which cost the peers 5-10x.

  The floor only parses and writes (``pyarrow.json.read_json`` + ``pyarrow.parquet.write_table``)
  and runs under both works (the same job; two samples of it).
* **(b) exact dedup**: drop every document whose text is byte-identical to an earlier one.
* **(c) fuzzy dedup**: MinHash + LSH over word 5-grams, 20 bands x 6 rows (120 permutations) for
  every implementation that lets one set them; candidate pairs are clustered, one document per
  cluster kept. Precision and recall against the planted duplicates of the synthetic corpora
  (see ``ingest_corpus.py``).

Each (corpus, work, implementation) runs in a fresh Python process pinned to one CPU
(``sched_setaffinity``; every child process inherits it, which for ours includes the Dask
scheduler and the worker), with ``OMP/OPENBLAS/MKL/RAYON_NUM_THREADS=1``. The parent samples
the child's process tree every 50 ms with psutil: peak RSS (sum over the tree) and CPU seconds
(user + system) between the child's "start" and "stop" marks. Wall time is measured inside the
child around the work alone (the implementation's imports, done first, and reading the
results back for precision/recall are outside it). MiB/s per core = input JSONL MiB / wall
seconds / 1 core.

Run: ``.venv/bin/python benchmarks/bench_ingest.py`` (all of the committed plan) or e.g.
``.venv/bin/python benchmarks/bench_ingest.py --plan smoke --only peers --works qa``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest_corpus as corpora
from ingest_corpus import Corpus, log, parse_size

REPO = Path(__file__).resolve().parent.parent
MIB = 2**20
NGRAM, BANDS, ROWS, SEED = 5, 20, 6, 1  # our FuzzyDedupConfig defaults, given to every peer
JACCARD = 0.8  # our FuzzyDedupConfig.jaccard_threshold, and rensa's deduplicator threshold
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")


# -- implementations (run in the child process) ------------------------------------------------

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile("[ \t]+")
_LINE_EDGES = re.compile(" ?\n ?")
_BLANK_LINES = re.compile("\n{3,}")


def normalize(text: str) -> str:
    """What our NormalizeConfig does, in Python, for the peers: NFC, C0/C1 control characters
    except \\n and \\t removed, runs of spaces/tabs to one space, lines trimmed, at most one
    blank line, the whole text trimmed."""
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _LINE_EDGES.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def gopher_kwargs() -> tuple[dict[str, Any], dict[str, Any]]:
    """datatrove's GopherQualityFilter / GopherRepetitionFilter arguments: its defaults, with
    the rules our FilterConfig does not have turned off (bullet and ellipsis lines, stop words,
    duplicate paragraphs). What stays matches our FilterConfig defaults one for one: 50-100k
    words, mean word length 3-10, '#' and ellipsis per word <= 0.1, alphabetic words >= 0.8,
    duplicate lines <= 0.3 and their characters <= 0.2, top 2/3/4-gram character fractions
    0.20/0.18/0.16, duplicate 5..10-gram character fractions 0.15..0.10."""
    quality = {"max_bullet_lines_ratio": None, "max_ellipsis_lines_ratio": None}
    quality["min_stop_words"] = None
    return quality, {"dup_para_frac": None, "dup_para_char_frac": None}


def gopher_reject(text: str, repetition: bool = True) -> str | None:
    """The rules of :func:`gopher_kwargs` for HF datasets: datatrove's own rule code and
    constants, with whitespace-separated words (what datatrove does with the whitespace
    tokenizer below); returns the first failed rule or None. ``repetition=False`` (work q):
    stop after the alphabetic-words rule, i.e. the quality rules only."""
    from datatrove.pipeline.filters.gopher_repetition_filter import (
        find_all_duplicate,
        find_duplicates,
        find_top_duplicate,
        get_n_grams,
    )
    from datatrove.utils.text import PUNCTUATION_SET

    words = text.split()
    n_words = len(words)
    kept = [w for w in words if any(ch not in PUNCTUATION_SET for ch in w)]
    if len(kept) < 50:
        return "short_doc"
    if len(kept) > 100_000:
        return "long_doc"
    mean = sum(len(w) for w in kept) / len(kept)
    if mean < 3 or mean > 10:
        return "mean_word_length"
    if text.count("#") / n_words > 0.1:
        return "hashes"
    if (text.count("...") + text.count("…")) / n_words > 0.1:
        return "ellipsis"
    if sum(any(c.isalpha() for c in w) for w in words) / n_words < 0.8:
        return "alpha_words"
    if not repetition:
        return None
    lines = re.split("\n+", text)
    dup_lines, dup_chars = find_duplicates(lines)
    if dup_lines / len(lines) > 0.3:
        return "dup_line_frac"
    if dup_chars / len(text) > 0.2:
        return "dup_line_char_frac"
    for n, frac in ((2, 0.20), (3, 0.18), (4, 0.16)):
        grams = get_n_grams(words, n)
        if grams and find_top_duplicate(grams) / len(text) > frac:
            return f"top_{n}_gram"
    for n, frac in ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)):
        if find_all_duplicate(words, n) / len(text) > frac:
            return f"dup_{n}_gram"
    return None


_NON_WORD = re.compile(r"[^\w\s]+")


def shingle_strings(text: str) -> list[str]:
    """Word 5-grams for datasketch and rensa: lower-cased, punctuation to spaces, whitespace
    split (the ground truth's definition, ``ingest_corpus.shingles``), each joined by a space."""
    w = _NON_WORD.sub(" ", text.lower()).split()
    return [" ".join(g) for g in zip(w, w[1:], w[2:], w[3:], w[4:], strict=False)]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the smaller index (earlier document) becomes the root: it is kept
            self.parent[max(ra, rb)] = min(ra, rb)

    def keep_mask(self) -> list[bool]:
        return [self.find(i) == i for i in range(len(self.parent))]


def _read_jsonl(path: Path) -> Any:
    import pyarrow.json as paj

    opts = paj.ReadOptions(use_threads=False, block_size=16 * MIB)
    return paj.read_json(path, read_options=opts)


def _write_parquet(table: Any, out: Path) -> None:
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "part-00000.parquet", compression="zstd")


def run_floor(work: str, path: Path, out: Path, scratch: Path) -> dict[str, Any]:
    """pyarrow floor: read_json (use_threads=False) + write_table (zstd); no normalize/filter."""
    table = _read_jsonl(path)
    _write_parquet(table, out)
    return {}


def run_hf(work: str, path: Path, out: Path, scratch: Path) -> dict[str, Any]:
    """HF datasets: load_dataset("json") (its cache in a fresh folder), then (q, a)
    map(normalize) + filter(gopher_reject is None; q: quality rules only), (b) map(xxh3-128
    of the text) + filter(first time seen, via a set), batched, num_proc=None (one process);
    to_parquet with its defaults (snappy: datasets 5 sets a per-column codec itself, so
    to_parquet cannot be given zstd)."""
    import datasets
    import xxhash

    datasets.disable_progress_bars()
    ds = datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=str(scratch / "hf-cache")
    )
    if work in ("q", "a"):
        repetition = work == "a"
        ds = ds.map(
            lambda texts: {"text": [normalize(t) for t in texts]},
            batched=True,
            input_columns=["text"],
        )
        ds = ds.filter(
            lambda texts: [gopher_reject(t, repetition) is None for t in texts],
            batched=True,
            input_columns=["text"],
        )
    else:
        ds = ds.map(
            lambda texts: {"_hash": [xxhash.xxh3_128_digest(t.encode()) for t in texts]},
            batched=True,
            input_columns=["text"],
        )
        seen: set[bytes] = set()

        def first_seen(hashes: list[bytes]) -> list[bool]:
            keep = []
            for h in hashes:
                keep.append(h not in seen)
                seen.add(h)
            return keep

        ds = ds.filter(first_seen, batched=True, input_columns=["_hash"])
        ds = ds.remove_columns("_hash")
    out.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(out / "part-00000.parquet"))
    return {}


def _datatrove_tokenizer(kind: str) -> Any:
    """``default``: datatrove's own (``Languages.english`` -> spaCy's blank English tokenizer);
    ``whitespace``: ``str.split`` (datatrove's ``WhitespaceTokenizer`` calls spaCy's
    multi-language tokenizer, so it is no faster)."""
    from datatrove.utils.typeshelper import Languages
    from datatrove.utils.word_tokenizers import WordTokenizer

    if kind == "default":
        return Languages.english

    class SplitTokenizer(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    return SplitTokenizer()


def _xxh64_str(text: str) -> int:
    import xxhash

    return xxhash.xxh64_intdigest(text.encode())


def run_datatrove(
    work: str, path: Path, out: Path, scratch: Path, tokenizer: str
) -> dict[str, Any]:
    """datatrove, LocalPipelineExecutor(tasks=1, workers=1) per stage (stage 2 of MinHash runs its
    20 bucket tasks one after another), JsonlReader in, ParquetWriter(zstd) out.
    (q) reader -> normalize (a BaseFormatter calling :func:`normalize`) -> GopherQualityFilter
    (:func:`gopher_kwargs`) -> writer; (a) the same with GopherRepetitionFilter after the quality
    filter; (b) ExactDedupSignature ->
    ExactFindDedups -> ExactDedupFilter on the text's UTF-8 bytes (xxh64); (c) MinhashDedup
    Signature -> Buckets -> Cluster -> Filter with MinhashConfig(n_grams=5, num_buckets=20,
    hashes_per_bucket=6, seed=1), 64-bit xxhash."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.formatters.base import BaseFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.logging import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")

    def reader() -> Any:
        return JsonlReader(str(path.parent), glob_pattern=path.name, doc_progress=False)

    def writer() -> Any:
        return ParquetWriter(str(out), compression="zstd")

    def run(steps: list[Any], name: str, tasks: int = 1) -> None:
        LocalPipelineExecutor(
            steps, tasks=tasks, workers=1, logging_dir=str(scratch / f"logs-{name}")
        ).run()

    if work in ("q", "a"):
        from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter

        class Normalize(BaseFormatter):
            name = "normalize"

            def format(self, text: str) -> str:
                return normalize(text)

        tok = _datatrove_tokenizer(tokenizer)
        quality, repetition = gopher_kwargs()
        steps = [reader(), Normalize(), GopherQualityFilter(**quality, language=tok)]
        if work == "a":
            steps.append(GopherRepetitionFilter(**repetition, language=tok))
        run([*steps, writer()], work)
    elif work == "b":
        from datatrove.pipeline.dedup.exact_dedup import (
            ExactDedupConfig,
            ExactDedupFilter,
            ExactDedupSignature,
            ExactFindDedups,
        )

        def content(doc: Any) -> bytes:
            return doc.text.encode()

        cfg = ExactDedupConfig(content_getter=content)
        run([reader(), ExactDedupSignature(str(scratch / "sigs"), config=cfg)], "sigs")
        run([ExactFindDedups(str(scratch / "sigs"), str(scratch / "dups"), config=cfg)], "find")
        run([reader(), ExactDedupFilter(str(scratch / "dups"), config=cfg), writer()], "filter")
    else:
        from datatrove.pipeline.dedup.minhash import (
            MinhashConfig,
            MinhashDedupBuckets,
            MinhashDedupCluster,
            MinhashDedupFilter,
            MinhashDedupSignature,
        )

        class Signature(MinhashDedupSignature):
            """datatrove 0.10 hashes each 5-gram ``str`` with ``xxhash.xxh64_intdigest``, which
            xxhash >= 4 (ours) refuses (datatrove pins xxhash < 4): the same xxh64 over the
            UTF-8 bytes, which is what xxhash 3 hashed."""

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self._hash_func = _xxh64_str

        cfg = MinhashConfig(n_grams=NGRAM, num_buckets=BANDS, hashes_per_bucket=ROWS, seed=SEED)
        sigs, buckets, clusters = (str(scratch / d) for d in ("sigs", "buckets", "clusters"))
        tok = _datatrove_tokenizer(tokenizer)
        run([reader(), Signature(sigs, config=cfg, language=tok)], "sigs")
        run([MinhashDedupBuckets(sigs, buckets, config=cfg)], "buckets", tasks=BANDS)
        run([MinhashDedupCluster(buckets, clusters, config=cfg)], "cluster")
        run([reader(), MinhashDedupFilter(clusters), writer()], "filter")
    return {}


def run_datasketch(work: str, path: Path, out: Path, scratch: Path) -> dict[str, Any]:
    """datasketch: read_json, :func:`shingle_strings` per document, MinHash.bulk(num_perm=120,
    seed=1) per 1000 documents, MinHashLSH(params=(20, 6)): each document queried, then
    inserted; candidate pairs union-found, the first document of each cluster kept;
    write_table(zstd). Documents without a 5-gram are kept and not indexed."""
    import pyarrow as pa
    from datasketch import MinHash, MinHashLSH

    table = _read_jsonl(path)
    texts = table.column("text").to_pylist()
    lsh = MinHashLSH(num_perm=BANDS * ROWS, params=(BANDS, ROWS))
    uf = _UnionFind(len(texts))
    for start in range(0, len(texts), 1000):
        batch = [[s.encode() for s in shingle_strings(t)] for t in texts[start : start + 1000]]
        idx = [start + i for i, b in enumerate(batch) if b]
        mhs = MinHash.bulk([b for b in batch if b], num_perm=BANDS * ROWS, seed=SEED)
        for i, m in zip(idx, mhs, strict=True):
            for j in lsh.query(m):
                uf.union(i, j)
            lsh.insert(i, m)
    _write_parquet(table.filter(pa.array(uf.keep_mask())), out)
    return {}


def run_rensa(work: str, path: Path, out: Path, scratch: Path, mode: str) -> dict[str, Any]:
    """rensa, full-set R-MinHash (num_perm=120, seed=1) of :func:`shingle_strings`, per 2000
    documents. ``lsh``: RMinHashLSH(num_bands=20) insert_many + query_all, candidate pairs
    union-found, first of each cluster kept (same as datasketch). ``dedup``:
    RMinHashDeduplicator(threshold=0.8, use_lsh=True, num_bands=20): a document is dropped when
    an LSH candidate among the kept ones has an *estimated* Jaccard >= 0.8."""
    import pyarrow as pa
    from rensa import RMinHash, RMinHashDeduplicator, RMinHashLSH

    table = _read_jsonl(path)
    texts = table.column("text").to_pylist()
    keep = [True] * len(texts)
    if mode == "lsh":
        lsh = RMinHashLSH(threshold=JACCARD, num_perm=BANDS * ROWS, num_bands=BANDS)
        uf = _UnionFind(len(texts))
        for start in range(0, len(texts), 2000):
            batch = [shingle_strings(t) for t in texts[start : start + 2000]]
            idx = [start + i for i, b in enumerate(batch) if b]
            mhs = RMinHash.from_token_sets(
                [b for b in batch if b], num_perm=BANDS * ROWS, seed=SEED
            )
            for i, m in zip(idx, mhs, strict=True):
                lsh.insert(i, m)
            for i, cands in zip(idx, lsh.query_all(mhs), strict=True):
                for j in cands:
                    if j != i:
                        uf.union(i, j)
        keep = uf.keep_mask()
    else:
        dedup = RMinHashDeduplicator(
            threshold=JACCARD, num_perm=BANDS * ROWS, use_lsh=True, num_bands=BANDS, seed=SEED
        )
        for start in range(0, len(texts), 2000):
            batch = [
                (i, shingle_strings(texts[i])) for i in range(start, min(start + 2000, len(texts)))
            ]
            batch = [(i, b) for i, b in batch if b]
            flags = dedup.add_pairs((str(i), b) for i, b in batch)
            for (i, _), added in zip(batch, flags, strict=True):
                keep[i] = bool(added)
    _write_parquet(table.filter(pa.array(keep)), out)
    return {}


def ours_config(work: str, verify: bool = False, algorithm: str | None = None) -> Any:
    """Our IngestConfig for a work: (a) normalize + filters (defaults = the Gopher rules
    above), no dedup; (q) the same with the repetition rules off
    (`FilterConfig(max_duplicate_line_fraction=None, max_duplicate_line_char_fraction=None,
    top_ngram_char_fraction={}, duplicate_ngram_char_fraction={})`); (b) exact dedup only;
    (c) fuzzy dedup only (defaults: 5-grams, 20 x 6, seed 1, signatures by one-permutation
    hashing with optimal densification, ``algorithm="oph"``; ``verify``: verify_jaccard=True,
    threshold 0.8; ``algorithm="minhash"``: classic MinHash, 120 hashes per shingle, as the
    peers compute it). One LocalCluster worker."""
    from pipelines.config import (
        ExactDedupConfig,
        ExecutionConfig,
        FilterConfig,
        FuzzyDedupConfig,
        IngestConfig,
        NormalizeConfig,
    )

    filters = FilterConfig(enabled=work in ("q", "a"))
    if work == "q":
        filters = FilterConfig(
            max_duplicate_line_fraction=None,
            max_duplicate_line_char_fraction=None,
            top_ngram_char_fraction={},
            duplicate_ngram_char_fraction={},
        )
    return IngestConfig(
        normalize=NormalizeConfig(enabled=work in ("q", "a")),
        filters=filters,
        exact_dedup=ExactDedupConfig(enabled=work == "b"),
        fuzzy_dedup=FuzzyDedupConfig(
            enabled=work == "c",
            verify_jaccard=verify,
            **({"algorithm": algorithm} if algorithm else {}),
        ),
        execution=ExecutionConfig(workers=1, progress=False),
    )


def run_ours(
    work: str, path: Path, out: Path, scratch: Path, verify: bool, algorithm: str | None = None
) -> dict[str, Any]:
    """Ours: ``pipelines.ingest([corpus], out, config=ours_config(work, verify))``, the Dask
    LocalCluster (1 worker process) started and stopped inside the timed call."""
    import pipelines

    t0 = time.perf_counter()
    marks: dict[str, float] = {}

    def echo(msg: str) -> None:  # "ingest: ..." just before the cluster starts, "dask: ..." after
        marks.setdefault(msg.split(":", 1)[0], time.perf_counter() - t0)

    config = ours_config(work, verify, algorithm)
    report = pipelines.ingest([str(path)], str(out), config=config, echo=echo)
    info: dict[str, Any] = {"report": report.to_dict()}
    if "ingest" in marks and "dask" in marks:
        info["cluster_start"] = marks["dask"] - marks["ingest"]
    return info


@dataclass(frozen=True)
class Impl:
    """One implementation: which works it does, whether it is ours, and how it runs."""

    name: str
    label: str
    group: str  # "ours", "peer" or "floor"
    works: tuple[str, ...]
    fn: Callable[..., dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    imports: tuple[str, ...] = ()  # imported before the timed part

    def run(self, work: str, path: Path, out: Path, scratch: Path) -> dict[str, Any]:
        return self.fn(work, path, out, scratch, **self.kwargs)


BASE_MODS = ("pyarrow.json", "pyarrow.parquet", "pyarrow.dataset", "xxhash")
HF_MODS = (
    "datasets",
    "datatrove.pipeline.filters.gopher_repetition_filter",
    "datatrove.utils.text",
)
DT_MODS = (
    "orjson",
    "datatrove.executor",
    "datatrove.pipeline.readers",
    "datatrove.pipeline.writers",
    "datatrove.pipeline.filters",
    "datatrove.pipeline.dedup.minhash",
    "datatrove.pipeline.dedup.exact_dedup",
)
OURS_MODS = ("pipelines", "pipelines.config", "distributed")
IMPLS: dict[str, Impl] = {
    i.name: i
    for i in [
        Impl("ours", "ours", "ours", ("q", "a", "b", "c"), run_ours, {"verify": False}, OURS_MODS),
        Impl(
            "ours-verify",
            "ours, verify_jaccard",
            "ours",
            ("c",),
            run_ours,
            {"verify": True},
            OURS_MODS,
        ),
        Impl(
            "ours-minhash",
            "ours, classic MinHash (algorithm=minhash)",
            "ours",
            ("c",),
            run_ours,
            {"verify": False, "algorithm": "minhash"},
            OURS_MODS,
        ),
        Impl("floor", "pyarrow floor (read_json + write_table)", "floor", ("q", "a"), run_floor),
        Impl("hf", "HF datasets", "peer", ("q", "a", "b"), run_hf, {}, HF_MODS),
        Impl(
            "datatrove",
            "datatrove, whitespace tokenizer",
            "peer",
            ("q", "a", "b", "c"),
            run_datatrove,
            {"tokenizer": "whitespace"},
            DT_MODS,
        ),
        Impl(
            "datatrove-spacy",
            "datatrove, default tokenizer (spaCy en)",
            "peer",
            ("q", "a", "c"),
            run_datatrove,
            {"tokenizer": "default"},
            (*DT_MODS, "spacy"),
        ),
        Impl(
            "datasketch",
            "datasketch MinHashLSH",
            "peer",
            ("c",),
            run_datasketch,
            {},
            ("datasketch",),
        ),
        Impl(
            "rensa",
            "rensa RMinHash + RMinHashLSH",
            "peer",
            ("c",),
            run_rensa,
            {"mode": "lsh"},
            ("rensa",),
        ),
        Impl(
            "rensa-dedup",
            "rensa RMinHashDeduplicator (est. J >= 0.8)",
            "peer",
            ("c",),
            run_rensa,
            {"mode": "dedup"},
            ("rensa",),
        ),
    ]
}
WORKS = "qabc"  # report order
WORK_NAMES = {
    "q": "(a) parse+normalize+filter+write, Gopher quality rules only",
    "a": "(a) parse+normalize+filter+write, Gopher quality + repetition rules",
    "b": "(b) exact dedup",
    "c": "(c) fuzzy dedup",
}


def removed_ids(
    impl: str, path: Path, out: Path, report: dict[str, Any] | None
) -> tuple[list[str], int | None, dict[str, int]]:
    """(ids removed, docs written, removed per reason), read back after the timed part: ours
    from its report's ``removed_uri`` (default ``<out>/_removed``; docs written: from the
    report), everyone else as input ids minus the ids in the output Parquet."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    if impl.startswith("ours"):
        from datastore import NotFound, open_dataset

        try:
            uri = (report or {}).get("removed_uri") or f"{out}/_removed"
            removed = open_dataset(uri).to_table()
        except NotFound:
            return [], None, {}  # child_main checks this against the report's counts
        reasons = Counter(str(r).split(":")[0] for r in removed.column("reason").to_pylist())
        return [str(x) for x in removed.column("id").to_pylist()], None, dict(reasons)
    ids_in = _read_jsonl(path).column("id")
    files = sorted(str(p) for p in out.rglob("*.parquet"))
    ids_out = pads.dataset(files, format="parquet").to_table(columns=["id"]).column("id")
    gone = pc.filter(ids_in, pc.invert(pc.is_in(ids_in, value_set=ids_out.combine_chunks())))
    return [str(x) for x in gone.to_pylist()], len(ids_out), {}


def child_main(spec: dict[str, Any]) -> int:
    """Run one case: the work between the start and stop marks, then read back what was removed."""
    impl = IMPLS[spec["impl"]]
    path, out, scratch = Path(spec["corpus"]), Path(spec["out"]), Path(spec["scratch"])
    for mod in (*BASE_MODS, *impl.imports):  # imports outside the timed part
        importlib.import_module(mod)
    gc.collect()
    (scratch / "start").touch()
    t0 = time.perf_counter()
    info = impl.run(spec["work"], path, out, scratch)
    wall = time.perf_counter() - t0
    (scratch / "stop").touch()
    removed, written, reasons = removed_ids(impl.name, path, out, info.get("report"))
    if written is None:
        rep = info["report"]
        written = rep["docs_out"]
        expect = rep["docs_in"] - rep["docs_out"] - rep.get("quarantined", 0)
        if len(removed) != expect:
            info["warning"] = (
                f"{out}/_removed has {len(removed)} rows; the report says "
                f"docs_in - docs_out - quarantined = {expect}"
            )
    info |= {"wall": wall, "docs_out": written, "removed": removed, "reasons": reasons}
    Path(spec["result"]).write_text(json.dumps(info, default=str))
    return 0


# -- the parent: cases, measurement, report ----------------------------------------------------


@dataclass
class Case:
    corpus_key: str
    corpus: Corpus
    work: str
    impl: str
    walls: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    docs_out: int | None = None
    removed: set[str] = field(default_factory=set)
    reasons: dict[str, int] = field(default_factory=dict)
    report: dict[str, Any] | None = None
    error: str | None = None
    warning: str | None = None
    cluster_start: float | None = None  # ours: LocalCluster + Client start-up, seconds
    set_aside: list[str] = field(default_factory=list)  # runs on a shared core, run again


def shared_core(case: Case) -> float | None:
    """wall / CPU of the case's last run when another process evidently shared its core (wall
    over CPU by more than 15% and 0.5 s: every implementation here keeps its one core busy, so
    an undisturbed run's CPU time is within a few % of its wall time), else None."""
    wall, cpu = case.walls[-1], case.cpu[-1]
    if cpu > 0 and wall > 1.15 * cpu and wall - cpu > 0.5:
        return wall / cpu
    return None


class TreeSampler(threading.Thread):
    """Samples a process tree: peak RSS and CPU seconds between the child's start/stop marks
    (sampling ends at the stop mark, so the child's read-back of the results is not counted)."""

    def __init__(self, pid: int, scratch: Path, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.scratch, self.interval = pid, scratch, interval
        self.peak = 0
        self.cpu_start: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        self.started = self.stopped = False
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.done.is_set():
            if not self.started and (self.scratch / "start").exists():
                self.started = True
                self.cpu_start = dict(self.cpu_last)
            if self.started and not self.stopped and (self.scratch / "stop").exists():
                self.stopped = True
            if self.stopped:  # CPU and RSS after the stop mark (the read-back) do not count
                break
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            rss = 0
            for p in procs:
                try:
                    with p.oneshot():
                        rss += p.memory_info().rss
                        t = p.cpu_times()
                        self.cpu_last[p.pid] = t.user + t.system
                except psutil.NoSuchProcess:
                    continue
            if self.started and not self.stopped:
                self.peak = max(self.peak, rss)
            self.done.wait(self.interval)

    def cpu_seconds(self) -> float:
        return sum(v - self.cpu_start.get(pid, 0.0) for pid, v in self.cpu_last.items())


def run_case(case: Case, cpu: int, workdir: Path, keep: bool, timeout: float) -> None:
    """One run of a case in a fresh process pinned to ``cpu``; appends to the case's lists. A
    run past ``timeout`` seconds is killed (its whole process group) and recorded as failed."""
    scratch = Path(tempfile.mkdtemp(prefix=f"{case.impl}-{case.work}-", dir=workdir))
    spec = {
        "impl": case.impl,
        "work": case.work,
        "corpus": str(case.corpus.path),
        "out": str(scratch / "out"),
        "scratch": str(scratch),
        "result": str(scratch / "result.json"),
    }
    env = dict(os.environ)
    env |= {k: "1" for k in THREAD_ENV}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    env["HF_DATASETS_CACHE"] = str(scratch / "hf-cache")
    gc.collect()
    os.sync()
    logf = scratch / "child.log"
    with open(logf, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(REPO),
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
            start_new_session=True,
        )
        sampler = TreeSampler(proc.pid, scratch)
        sampler.start()
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            rc = proc.wait()
            case.error = f"killed after {timeout:.0f} s (--case-timeout)"
        sampler.done.set()
        sampler.join()
    try:
        if case.error:
            log(f"  FAILED {case.impl} {case.work} on {case.corpus.name}: {case.error}")
            return
        if rc != 0:
            tail = logf.read_text(errors="replace").strip().splitlines()[-15:]
            case.error = f"exit {rc}: " + " | ".join(tail)[-1500:]
            log(f"  FAILED {case.impl} {case.work} on {case.corpus.name}: {case.error}")
            return
        res = json.loads(Path(spec["result"]).read_text())
        case.walls.append(res["wall"])
        case.cpu.append(sampler.cpu_seconds())
        case.rss.append(sampler.peak)
        case.docs_out = res["docs_out"]
        case.removed = set(res["removed"])
        case.reasons = res.get("reasons", {})
        case.report = res.get("report")
        case.cluster_start = res.get("cluster_start")
        if res.get("warning"):
            case.warning = res["warning"]
            log(f"  WARNING {case.impl} {case.work} on {case.corpus.name}: {case.warning}")
        log(
            f"  {case.corpus_key:8} {case.work} {case.impl:16} {res['wall']:8.2f} s  "
            f"{case.corpus.mib / res['wall']:7.2f} MiB/s  cpu {case.cpu[-1]:7.1f} s  "
            f"peak {sampler.peak / MIB:7.0f} MiB  out {res['docs_out']}"
        )
    finally:
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)


# Plans: corpus key -> (kind, default size, {work: implementations}).
A_ALL = ("floor", "hf", "datatrove", "ours")  # works q and a
B_ALL = ("hf", "datatrove", "ours")
C_ALL = ("datatrove", "datasketch", "rensa", "rensa-dedup", "ours", "ours-verify", "ours-minhash")
SPACY = {
    "q": ("datatrove-spacy", "datatrove", "ours"),
    "a": ("datatrove-spacy", "datatrove", "ours"),
    "c": ("datatrove-spacy", "datatrove", "ours", "ours-verify"),
}
Plan = dict[str, tuple[str, str, dict[str, tuple[str, ...]]]]
PLANS: dict[str, Plan] = {
    # The committed run: every peer on the 100 MB slices; the spaCy tokenizer (~0.2 MiB/s) on
    # 10 MB; the 2 GB corpus only for the floor, HF's exact dedup (its filter path with the
    # repetition rules runs at ~1.5 MiB/s, 20+ minutes for 2 GB) and ours.
    "full": {
        "slice": ("synthetic", "100MB", {"q": A_ALL, "a": A_ALL, "b": B_ALL, "c": C_ALL}),
        "spacy": ("synthetic", "10MB", SPACY),
        "real": ("real", "100MB", {"q": A_ALL, "a": A_ALL, "b": B_ALL, "c": C_ALL}),
        "big": (
            "synthetic",
            "2GB",
            {"q": ("floor", "ours"), "a": ("floor", "ours"), "b": ("hf", "ours")},
        ),
    },
    # The same on small corpora, to check that everything runs (timings mean little).
    "smoke": {
        "slice": ("synthetic", "5MB", {"q": A_ALL, "a": A_ALL, "b": B_ALL, "c": C_ALL}),
        "spacy": ("synthetic", "1MB", SPACY),
        "real": ("real", "5MB", {"q": A_ALL, "a": A_ALL, "b": B_ALL, "c": C_ALL}),
        "big": (
            "synthetic",
            "20MB",
            {"q": ("floor", "ours"), "a": ("floor", "ours"), "b": ("hf", "ours")},
        ),
    },
}


def select(names: tuple[str, ...], only: list[str] | None) -> tuple[str, ...]:
    if not only:
        return names
    keep = []
    for n in names:
        impl = IMPLS[n]
        if n in only or impl.group in only or (impl.group + "s") in only:
            keep.append(n)
    return tuple(keep)


def ours_available() -> str | None:
    """None when ``pipelines.ingest`` can be imported, else why not."""
    try:
        import pipelines
    except Exception as err:
        return f"import pipelines failed: {err}"
    if not hasattr(pipelines, "ingest"):
        return "pipelines.ingest does not exist yet"
    return None


# -- report ------------------------------------------------------------------------------------


def _sh(cmd: str) -> str:
    try:
        return subprocess.run(
            cmd, shell=True, capture_output=True, text=True, timeout=20
        ).stdout.strip()
    except Exception:
        return "?"


def machine() -> list[str]:
    cpu = _sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = int(_sh("grep MemTotal /proc/meminfo | awk '{print $2}'") or 0) / 1024**2
    git = f"git -C {shlex.quote(str(REPO))}"
    dirty = _sh(git + " status --porcelain pipelines datastore")
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores (each case pinned to one); "
        f"VM: {_sh('systemd-detect-virt --vm 2>/dev/null') or '?'}",
        f"- RAM: {mem:.1f} GiB",
        f"- OS: {platform.platform()}",
        f"- git: {_sh(git + ' rev-parse --short HEAD')}"
        + (" + uncommitted changes in pipelines/ or datastore/" if dirty else ""),
    ]


def versions() -> str:
    names = ["pyarrow", "datasets", "datatrove", "spacy", "datasketch", "rensa", "orjson"]
    names += ["xxhash", "dask", "distributed", "numpy", "psutil"]
    out = [f"Python {platform.python_version()}"]
    for n in names:
        try:
            out.append(f"{n} {metadata.version(n)}")
        except metadata.PackageNotFoundError:
            out.append(f"{n} (not installed)")
    return ", ".join(out)


def _md(doc: str | None) -> str:
    """A docstring as one markdown line: reST roles and double backticks to plain code."""
    text = " ".join((doc or "").split())
    return re.sub(r":\w+:`", "`", text).replace("``", "`")


def _ratio(x: float) -> str:
    return f"{x:.2f}x"


def best(case: Case) -> float:
    return min(case.walls)


def report(
    args: argparse.Namespace,
    cases: list[Case],
    corpora_used: dict[str, Corpus],
    skipped: list[str],
    started: str,
    elapsed: float,
) -> str:
    lines = [
        "# Ingestion benchmark: ours vs. HF datasets, datatrove, datasketch, rensa, pyarrow floor",
        "",
        f"Produced by: `{' '.join(shlex.quote(a) for a in ['.venv/bin/python', *sys.argv])}`",
        f"(started {started}, took {elapsed / 60:.1f} min)",
        "",
        "## Machine",
        "",
        *machine(),
        f"- Versions: {versions()}",
        "",
        "## Corpora",
        "",
        "| key | corpus | docs | MiB | planted exact / near dup / near miss / junk | ran |",
        "|---|---|---|---|---|---|",
    ]
    for key, c in corpora_used.items():
        planted = "-"
        if c.truth is not None:
            t = corpora.load_truth(c)
            planted = " / ".join(str(len(t[k])) for k in ("exact", "near", "near_miss", "junk"))
        ran = "; ".join(
            f"({w}) " + ", ".join(x.impl for x in cases if x.corpus_key == key and x.work == w)
            for w in WORKS
            if any(x.corpus_key == key and x.work == w for x in cases)
        )
        lines.append(f"| {key} | `{c.path.name}` | {c.docs:,} | {c.mib:.1f} | {planted} | {ran} |")
    lines += [
        "",
        "Synthetic: see `benchmarks/ingest_corpus.py` (real-word vocabulary from this machine's "
        "docs, man pages and Python docstrings; near duplicates have a true word-5-gram "
        "Jaccard of 0.8-0.98 with their original, near misses 0.5-0.7 and must be kept). "
        "Real: man pages (troff stripped), /usr/share/doc text, Python stdlib sources, one "
        "document per file, no ground truth.",
        "",
        "## Method",
        "",
        "- One fresh process per (corpus, work, implementation), pinned to one CPU with "
        "`sched_setaffinity` (inherited by its child processes: for ours the Dask scheduler "
        "and the one worker; for datatrove its multiprocess manager), with "
        f"`{'/'.join(THREAD_ENV)}=1`. Wall time inside the process around the work only "
        "(imports and the read-back for precision/recall excluded); MiB/s per core = input "
        "JSONL MiB / wall s (one core). CPU s and peak RSS: the process tree sampled every "
        "50 ms with psutil between the start and stop marks (RSS counts file pages mapped and "
        "touched, e.g. HF datasets' Arrow cache files). "
        f"Best of {args.repeats} run(s) per case; cases whose first run took under "
        f"{args.short:g} s (their noise is a larger share: e.g. the 100 MB floor measured "
        f"0.5-1.2 s) best of {max(args.repeats, args.short_runs)}, the runs taken round-robin "
        "over all cases. A run whose wall time exceeds its CPU time by more than 15% and "
        "0.5 s is taken to have shared its core with another process (every implementation "
        "here keeps its one core busy: undisturbed, CPU is within a few % of wall); it is set "
        f"aside and run again, up to {args.retries} times (listed under the raw wall times).",
        f"- Same data for everyone in a table; fuzzy dedup uses {NGRAM}-grams and {BANDS} bands "
        f"x {ROWS} rows ({BANDS * ROWS} permutations), seed {SEED}, for every implementation "
        "(datatrove: `MinhashConfig(n_grams=5, num_buckets=20, hashes_per_bucket=6)`; "
        "datasketch: `MinHashLSH(params=(20, 6))`; rensa: `num_perm=120, num_bands=20`; "
        "ours: the defaults of `FuzzyDedupConfig`, whose signatures are one-permutation "
        "hashing with optimal densification (`algorithm='oph'`, one hash per shingle, 120 "
        "bins); the row *ours, classic MinHash* sets `algorithm='minhash'`, 120 hashes per "
        "shingle like the peers).",
    ]
    for impl in IMPLS.values():
        if impl.name in ("ours-verify", "ours-minhash", "datatrove-spacy", "rensa-dedup"):
            continue  # same function as the row before
        lines.append(f"- **{impl.label}**: {_md(impl.fn.__doc__)}")
    lines += [
        f"- Normalize (peers): {_md(normalize.__doc__)}",
        f"- Gopher rules: {_md(gopher_kwargs.__doc__)} HF datasets runs "
        "them through `gopher_reject` (datatrove's own rule helpers and constants, whitespace "
        "words), so HF and datatrove-whitespace keep the same documents. "
        "**Two filtering works**: *quality rules only* (work `q`: the first four rules, no "
        "duplicate-line / n-gram rules; datatrove: GopherQualityFilter alone; the issue's "
        "like-for-like reading, its peer figures of 15-19 MiB/s per core are only reachable "
        "this way) and *quality + repetition rules* (work `a`: all of them; datatrove: "
        "GopherQualityFilter then GopherRepetitionFilter). The floor runs under both (the same "
        "job, measured twice).",
        f"- Ours' configs: {_md(ours_config.__doc__)}",
        "- datatrove tokenizers: "
        + _md(_datatrove_tokenizer.__doc__)
        + " The Gopher filters and the MinHash signature both use the tokenizer.",
        "- Precision and recall (synthetic corpora) of the set of removed ids (ours: from "
        "`<output>/_removed`; everyone else: input ids minus output ids) against what should "
        "go: (a, quality + repetition) all planted junk, (a, quality only) the planted junk "
        "except the repeated-lines kind (only repetition rules catch it), (b) the planted "
        "exact duplicates, (c) the planted exact and "
        "near duplicates (a removed near miss is a false positive). "
        "**ours ÷ this (speed)** = this row's wall time / ours' wall time (> 1: ours is faster).",
    ]
    if skipped:
        lines += ["", "Not run: " + "; ".join(skipped)]
    lines += ["", "## Results", ""]
    for key, c in corpora_used.items():
        rows = [x for x in cases if x.corpus_key == key]
        if not rows:
            continue
        lines += [
            f"### {key}: `{c.path.name}` ({c.docs:,} docs, {c.mib:.1f} MiB)",
            "",
            "| work | implementation | docs out | wall s | docs/s | MiB/s per core | CPU s | "
            "peak RSS MiB | precision | recall | ours ÷ this (speed) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        truth = corpora.load_truth(c) if c.truth is not None else None
        for work in WORKS:
            wrows = [x for x in rows if x.work == work]
            ours = next((x for x in wrows if x.impl == "ours" and x.walls), None)
            for x in wrows:
                label = IMPLS[x.impl].label
                if not x.walls:
                    lines.append(f"| {WORK_NAMES[work]} | {label} | failed | | | | | | | | |")
                    continue
                t = best(x)
                i = x.walls.index(t)
                prec = rec = ""
                if truth is not None and IMPLS[x.impl].group != "floor":
                    p, r = corpora.precision_recall(x.removed, corpora.planted(truth, work))
                    prec, rec = f"{p:.3f}", f"{r:.3f}"
                mine = IMPLS[x.impl].group == "ours"
                ratio = "" if mine or ours is None else _ratio(t / best(ours))
                lines.append(
                    f"| {WORK_NAMES[work]} | {label} | {x.docs_out:,} | {t:.2f} | "
                    f"{c.docs / t:,.0f} | {c.mib / t:.2f} | {x.cpu[i]:.1f} | "
                    f"{x.rss[i] / MIB:,.0f} | {prec} | {rec} | {ratio} |"
                )
        for x in rows:
            if x.walls and x.reasons:
                why = ", ".join(f"{k} {v:,}" for k, v in sorted(x.reasons.items()))
                lines.append(f"\n{IMPLS[x.impl].label} ({x.work}) removed: {why}.")
        lines.append("")
    lines += goals(cases)
    lines += time_split(cases)
    lines += ["## Raw wall times (seconds, every run)", ""]
    for x in cases:
        if x.walls:
            lines.append(
                f"- {x.corpus_key} {x.work} {x.impl}: " + ", ".join(f"{s:.2f}" for s in x.walls)
            )
        elif x.error:
            lines.append(f"- {x.corpus_key} {x.work} {x.impl}: failed: {x.error}")
        if x.set_aside:
            lines.append("  - set aside (core shared), run again: " + "; ".join(x.set_aside))
        if x.warning:
            lines.append(f"  - warning: {x.warning}")
        timings = (x.report or {}).get("timings")
        if timings:
            lines.append(
                "  - ours' own timings (s): "
                + ", ".join(
                    f"{k} {v:.2f}" for k, v in timings.items() if isinstance(v, int | float)
                )
            )
    return "\n".join(lines) + "\n"


def time_split(cases: list[Case]) -> list[str]:
    """Where ours' wall time goes, from its report's ``timings`` (of the last run) and the time
    between its "ingest:" and "dask:" messages (cluster start-up). ``other``: the wall time
    none of these cover (cluster shutdown, scattering the job context, the commit, deleting
    the work folder)."""
    rows = [x for x in cases if IMPLS[x.impl].group == "ours" and x.walls and x.report]
    if not rows:
        return []
    out = [
        "## Where ours' time goes",
        "",
        _md(time_split.__doc__),
        "",
        "| corpus | work | impl | wall s | cluster start | plan | prepare | dedup buckets | "
        "dedup verify | dedup ids | finalize | other |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ("plan", "prepare", "dedup_buckets", "dedup_verify", "dedup_ids", "finalize")
    for x in rows:
        t = (x.report or {}).get("timings", {})
        wall = x.walls[-1]
        start = x.cluster_start or 0.0
        parts = [float(t.get(k, 0.0)) for k in keys]
        other = wall - start - sum(parts)
        cells = [f"{start:.2f}", *(f"{v:.2f}" if v else "-" for v in parts), f"{other:.2f}"]
        out.append(
            f"| {x.corpus_key} | {x.work} | {x.impl} | {wall:.2f} | " + " | ".join(cells) + " |"
        )
    return [*out, ""]


def goals(cases: list[Case]) -> list[str]:
    """The issue's goals, checked on every corpus where both sides ran. (a) is read
    like-for-like with the issue (whose peers ran at 15-19 MiB/s per core): on work q, the
    Gopher quality rules only. Work a (with the repetition rules) is shown as a stricter
    reading, not counted as a goal: no peer comes near the issue's speeds with those rules."""
    by = {(x.corpus_key, x.work, x.impl): x for x in cases if x.walls}
    out = ["## Goals", "", "| goal | corpus | measured | met |", "|---|---|---|---|"]
    strict = [
        "",
        "Other readings, not counted: (a) with the Gopher repetition rules as well (work a; "
        "no peer runs near the issue's speeds with them, so the issue's 1.7x HF / 2x datatrove "
        "equivalence does not hold there and the floor ratio is the one that matters), and (c) "
        "with ours computing classic MinHash signatures (`algorithm='minhash'`) like the peers "
        "instead of its default one-permutation hashing.",
        "",
        "| check | corpus | measured | met |",
        "|---|---|---|---|",
    ]
    verdicts: list[str] = []
    strict_verdicts: list[str] = []

    def speed(
        key: str, work: str, ours: str, peer: str, need: float, what: str, counted: bool = True
    ) -> None:
        a, b = by.get((key, work, ours)), by.get((key, work, peer))
        if a is None or b is None:
            return
        r = best(b) / best(a)
        ok = r >= need
        (out if counted else strict).append(
            f"| {what} | {key} | {r:.2f}x | {'yes' if ok else '**no**'} |"
        )
        (verdicts if counted else strict_verdicts).append(
            f"{what} on {key}: {r:.2f}x, {'met' if ok else 'NOT met'}"
        )

    def quality(key: str, impl: str, which: str, need: float, what: str) -> None:
        x = by.get((key, "c", impl))
        c = x.corpus if x else None
        if x is None or c is None or c.truth is None:
            return
        p, r = corpora.precision_recall(x.removed, corpora.planted(corpora.load_truth(c), "c"))
        v = p if which == "precision" else r
        ok = v >= need
        out.append(f"| {what} | {key} | {v:.3f} | {'yes' if ok else '**no**'} |")
        verdicts.append(f"{what} on {key}: {v:.3f}, {'met' if ok else 'NOT met'}")

    keys = list(dict.fromkeys(x.corpus_key for x in cases))
    for key in keys:
        speed(key, "q", "ours", "floor", 0.9, "(a, quality rules) ours >= 0.9x pyarrow floor")
        speed(key, "q", "ours", "hf", 1.7, "(a, quality rules) ours >= 1.7x HF datasets")
        speed(key, "q", "ours", "datatrove", 2.0, "(a, quality rules) ours >= 2x datatrove (ws)")
        speed(key, "b", "ours", "hf", 2.0, "(b) ours >= 2x HF datasets")
        for ours in ("ours", "ours-verify"):
            tag = "ours" if ours == "ours" else "ours+verify"
            speed(key, "c", ours, "datatrove", 3.0, f"(c) {tag} >= 3x datatrove (whitespace)")
            speed(key, "c", ours, "rensa", 0.8, f"(c) {tag} >= 0.8x rensa")
        quality(key, "ours", "recall", 0.95, "(c) ours recall >= 0.95")
        quality(key, "ours-verify", "recall", 0.95, "(c) ours+verify recall >= 0.95")
        quality(key, "ours-verify", "precision", 0.99, "(c) ours+verify precision >= 0.99")
        speed(key, "a", "ours", "floor", 0.9, "(a, +repetition) ours >= 0.9x floor", False)
        speed(key, "a", "ours", "hf", 1.7, "(a, +repetition) ours >= 1.7x HF", False)
        speed(key, "a", "ours", "datatrove", 2.0, "(a, +repetition) ours >= 2x datatrove", False)
        tag = "(c) ours with classic MinHash"
        speed(key, "c", "ours-minhash", "datatrove", 3.0, f"{tag} >= 3x datatrove", False)
        speed(key, "c", "ours-minhash", "rensa", 0.8, f"{tag} >= 0.8x rensa", False)
    if len(out) == 4:
        out.append("| (ours was not measured in this run) | | | |")
    if len(strict) > 6:
        out += strict
    missed = [v for v in verdicts if v.endswith("NOT met")]
    out += ["", "## Findings", ""]
    if not verdicts:
        out.append("- No goal could be checked (ours not run).")
    else:
        out.append(f"- Goals checked: {len(verdicts)}; met: {len(verdicts) - len(missed)}.")
        out += [f"- Missed: {v.removesuffix(', NOT met')}" for v in missed]
    if strict_verdicts:
        n_ok = sum(v.endswith(", met") for v in strict_verdicts)
        out.append(f"- Other readings (not counted): {n_ok} of {len(strict_verdicts)} met.")
    # How the "0.9x floor = about 1.7x HF and 2x datatrove" holds on this machine:
    # the issue had floor/HF = 35.0/18.9 = 1.85 and floor/datatrove = 35.0/15.4 = 2.27.
    for key in keys:
        for work in ("q", "a"):
            fl = by.get((key, work, "floor"))
            if fl is None:
                continue
            parts = [
                f"{best(x) / best(fl):.1f}x {name}"
                for name, x in (
                    ("HF", by.get((key, work, "hf"))),
                    ("datatrove-ws", by.get((key, work, "datatrove"))),
                )
                if x is not None
            ]
            if parts:
                out.append(
                    f"- On {key}, {WORK_NAMES[work]}, the floor runs at "
                    + " and ".join(parts)
                    + " (the issue's figures: 1.85x HF, 2.27x datatrove), so 0.9x the floor "
                    "means 0.9 times that against each peer (the issue: 1.7x HF, 2x datatrove)."
                )
    out += ["", "(Explanations of missed goals are added by hand below this line.)", ""]
    return out


# -- main ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def workdir_for(arg: str) -> Iterator[Path]:
    base = Path(arg)
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="ingest-run-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--plan", choices=sorted(PLANS), default="full")
    ap.add_argument(
        "--corpora", help="comma list of the plan's corpus keys to run (default: all of them)"
    )
    ap.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="KEY=SIZE",
        help="override a corpus size, e.g. --size big=1GB --size slice=50MB",
    )
    ap.add_argument("--works", default=WORKS, help="subset of q, a, b, c")
    ap.add_argument(
        "--only",
        help="comma list of implementations or groups (ours, peers, floor), e.g. 'peers,floor'",
    )
    ap.add_argument("--repeats", type=int, default=1, help="runs per case; the best is reported")
    ap.add_argument(
        "--short",
        type=float,
        default=10.0,
        help="cases whose best run is under this many seconds get --short-runs runs",
    )
    ap.add_argument("--short-runs", type=int, default=3, help="see --short")
    ap.add_argument(
        "--retries",
        type=int,
        default=2,
        help="runs again (up to this many times) a run whose core was evidently shared",
    )
    ap.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)), help="CPU to pin to")
    ap.add_argument("--seed", type=int, default=0, help="corpus seed")
    ap.add_argument("--data-dir", type=Path, default=corpora.DATA)
    ap.add_argument("--workdir", default=str(corpora.DATA), help="scratch (a fresh subfolder)")
    ap.add_argument("--keep", action="store_true", help="keep every case's scratch folder")
    ap.add_argument(
        "--case-timeout", type=float, default=600, help="seconds before a case is killed"
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/ingest.md"))
    args = ap.parse_args(argv)
    if args.child:
        return child_main(json.loads(args.child))

    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    t_start = time.perf_counter()
    plan = dict(PLANS[args.plan])
    if args.corpora:
        plan = {k: v for k, v in plan.items() if k in args.corpora.split(",")}
    sizes = {k: parse_size(v[1]) for k, v in plan.items()}
    for item in args.size:
        key, _, size = item.partition("=")
        if key not in plan:
            ap.error(f"--size {item}: no corpus {key!r} in plan {args.plan!r}")
        sizes[key] = parse_size(size)
    only = args.only.split(",") if args.only else None
    skipped: list[str] = []
    why = ours_available()
    if why and (not only or any(o in ("ours", "ours-verify") for o in only)):
        skipped.append(f"ours ({why})")
        log(f"skipping ours: {why}")

    cases: list[Case] = []
    corpora_used: dict[str, Corpus] = {}
    for key, (kind, _, works) in plan.items():
        todo = [
            (w, n)
            for w, names in works.items()
            if w in args.works
            for n in select(names, only)
            if not (why and IMPLS[n].group == "ours")
        ]
        if not todo:
            continue
        make = corpora.synthetic_corpus if kind == "synthetic" else corpora.real_corpus
        corpus = make(sizes[key], args.seed, args.data_dir)
        corpora_used[key] = corpus
        cases += [Case(key, corpus, w, n) for w, n in todo]
    log(f"{len(cases)} cases on CPU {args.cpu}, {args.repeats} run(s) each")

    with workdir_for(args.workdir) as work:
        for r in range(max(args.repeats, args.short_runs)):
            for case in cases:
                short = bool(case.walls) and best(case) < args.short
                if r == 0 or (case.walls and (r < args.repeats or (short and r < args.short_runs))):
                    for attempt in range(args.retries + 1):
                        with open(case.corpus.path, "rb") as fh:  # warm the page cache, untimed
                            while fh.read(64 * MIB):
                                pass
                        n = len(case.walls)
                        run_case(case, args.cpu, work, args.keep, args.case_timeout)
                        ratio = shared_core(case) if len(case.walls) > n else None
                        if ratio is None:
                            break
                        what = f"{case.walls[-1]:.2f} s wall, {case.cpu[-1]:.2f} s CPU"
                        if attempt < args.retries:
                            log(f"  {case.impl} {case.work}: {what}: core shared? running again")
                            case.set_aside.append(what)
                            del case.walls[-1], case.cpu[-1], case.rss[-1]
                        else:
                            case.warning = f"core shared with another process? ({what})"

    text = report(args, cases, corpora_used, skipped, started, time.perf_counter() - t_start)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
