"""Loader benchmark: ``loaders.StreamingDataset`` against MosaicML ``streaming`` and
``litdata`` and against raw-read floors, side by side in one run on the same data.

Data (built once, cached under ``benchmarks/.data/``): the real-text corpus of
``ingest_corpus.py`` (``--size``, 100 MB by default) as (a) a table dataset of text rows and
(b), tokenized with the built-in byte tokenizer, a packed token dataset of 2,048-token rows
(uint16, 4 KiB per row), both in ~35 shards as in the issue's reference measurements. The
peers get the same samples in their own formats, written by their own writers (Mosaic's
``MDSWriter``, LitData's ``optimize``) with the same number of samples per shard (tokens; for
text, ours are cut by bytes, theirs by the mean rows per shard of ours): see
``loader_peers.py``, which runs them in their own virtual environment
(``make benchmarks/.peers/.done``).

Sources: local disk, and a SeaweedFS S3 server on loopback (every loader streams through its
own local cache; the cache limit is half the dataset's decoded size, as in the issue). On S3
ours reads with a shuffle block of a quarter of the samples, so that a block's shards fit the
cache (the loader warns when they cannot); its default block (here the whole epoch) is
measured too, once, as ``ours-default-block`` with 0 workers.

Cases, each with 0, 2 and 4 DataLoader workers, batch 32, shuffled (each loader's default
shuffle), two epochs (the first cold: empty cache; the second is the one measured):

* ``ours``: ``StreamingDataset`` through ``StatefulLoader`` (token batches with all outputs:
  int64 ``input_ids``, ``labels``, ``position_ids``, plus ``cu_seqlens`` and ``seq_lens``; the
  peers hand over the stored uint16 rows only);
* ``mosaic``, ``litdata``: as their docs recommend for training (``loader_peers.py``);
* floors: ``floor-memmap`` (token rows from one ``.npy`` through ``numpy.memmap``, batches of
  32 taken sequentially and widened to int64), ``floor-arrow`` (text rows from uncompressed
  Arrow IPC through ``pyarrow.memory_map``, sequential batches of 32 as Python strings) and
  ``floor-boto3`` (every object of our dataset fetched whole by raw boto3 ``get_object``, one
  at a time, from the same server; its samples/s is the dataset's samples over that time).

Also reported: time to first batch, peak RSS of the process and its workers, cache bytes
against the limit, S3 bytes over both epochs (measured as loopback traffic and calibrated by
the boto3 floor, which reads a known number of bytes: SeaweedFS moves each byte over
loopback more than once), and shuffle quality (distinct source shards per 256 consecutive
samples). Results: ``benchmarks/results/loaders.md``.

Run: ``make benchmarks/.peers/.done && .venv/bin/python benchmarks/bench_loaders.py``
"""

from __future__ import annotations

import argparse
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

RESULTS = REPO / "benchmarks" / "results" / "loaders.md"
PEERS_PY = REPO / "benchmarks" / ".peers" / "bin" / "python"
BATCH = 32
SEQ_LEN = 2048
TOKEN_SHARDS = 35
BUCKET = "bench-loaders"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- data ------------------------------------------------------------------------------------
def prepare(size: int) -> dict[str, Any]:
    """Our two datasets, and the peers' inputs: the token rows as one ``.npy`` and the text
    rows as Arrow files in our shards' order."""
    import numpy as np
    import pyarrow as pa

    from datastore import DatasetWriter, open_dataset
    from datastore.packed import open_packed
    from pipelines.config import ExecutionConfig
    from pipelines.tokenize import TokenizeConfig, tokenize

    label = size_label(size)
    table = DATA / f"loaders-{label}-text"
    tokens = DATA / f"loaders-{label}-tokens"
    peers_in = DATA / f"loaders-{label}-peer-inputs"
    corpus = real_corpus(size)
    texts = [json.loads(line)["text"] for line in corpus.path.open()]
    try:
        open_dataset(str(table))
    except Exception:
        shutil.rmtree(table, ignore_errors=True)
        target = sum(len(t.encode()) for t in texts) * 10 // 44 // TOKEN_SHARDS  # ~35 shards
        with DatasetWriter(str(table), shard_size=target, row_group_bytes=target // 4) as w:
            w.write(pa.table({"text": texts}))
    try:
        open_dataset(str(tokens))
    except Exception:
        shutil.rmtree(tokens, ignore_errors=True)
        total = sum(len(t.encode()) + 1 for t in texts)  # byte tokens + EOS each
        rows = -(-total // SEQ_LEN)
        shard_rows = -(-rows // TOKEN_SHARDS // 64) * 64
        cfg = TokenizeConfig(
            seq_len=SEQ_LEN,
            shard_rows=shard_rows,
            chunk_rows=64,
            execution=ExecutionConfig(progress=False),
        )
        tokenize(str(table), str(tokens), cfg)
    packed = open_packed(str(tokens))
    shard_rows = int(packed.tokens.shards[0])
    npy = peers_in / "tokens.npy"
    text_dir = peers_in / "text"
    if not (peers_in / "done").exists():
        shutil.rmtree(peers_in, ignore_errors=True)
        text_dir.mkdir(parents=True)
        np.save(npy, np.asarray(packed.tokens[:]))
        ds = open_dataset(str(table))
        for i in range(len(ds.shards)):  # type: ignore[attr-defined]
            t = ds.read_shard(i, ["text"])  # type: ignore[attr-defined]
            path = str(text_dir / f"{i:05d}.arrow")
            with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, t.schema) as w:
                w.write_table(t)
        (peers_in / "done").touch()
    text_ds = open_dataset(str(table))
    text_rows = sum(s.rows for s in text_ds.shards)  # type: ignore[attr-defined]
    return {
        "tokens": {
            "uri": str(tokens),
            "peer_source": str(npy),
            "rows_per_shard": shard_rows,
            "samples": packed.rows,
            "shards": -(-packed.rows // shard_rows),
        },
        "text": {
            "uri": str(table),
            "peer_source": str(text_dir),
            "rows_per_shard": round(text_rows / len(text_ds.shards)),  # type: ignore[attr-defined]
            "samples": text_rows,
            "shards": len(text_ds.shards),  # type: ignore[attr-defined]
        },
    }


def upload(local: str, client: Any, prefix: str) -> str:
    """Our dataset's objects under ``s3://BUCKET/prefix`` (its work folder left out)."""
    root = Path(local)
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith("_work"):
            client.upload_file(str(path), BUCKET, f"{prefix}/{rel}")
    return f"s3://{BUCKET}/{prefix}"


def decoded_bytes(spec: dict[str, Any], kind: str) -> int:
    """What a full cache of the dataset holds (our decoded form)."""
    if kind == "tokens":
        return int(spec["samples"]) * SEQ_LEN * 2
    return sum(p.stat().st_size for p in Path(spec["peer_source"]).glob("*.arrow"))


# -- measuring -------------------------------------------------------------------------------
def loopback_bytes() -> int:
    """Bytes received on the loopback interface so far (all processes)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[0])
    return 0


class PeakRSS:
    """Peak memory of this process plus its children, polled every 0.1 s: RSS (shared pages
    counted in every process) and PSS (shared pages split between their processes)."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = pss = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    info = p.memory_full_info()
                    total += info.rss
                    pss += info.pss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self.peak_pss = max(self.peak_pss, pss)
            self._stop.wait(0.1)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_ours(
    kind: str,
    uri: str,
    workers: int,
    cache: Path,
    config: Any = None,
    limit: int | None = None,
    block: int | None = None,
) -> dict[str, Any]:
    from loaders import StatefulLoader, StreamingDataset, shuffle_quality

    text = kind == "text"
    kwargs: dict[str, Any] = {"columns": ["text"]} if text else {}
    if block is not None:
        kwargs["block"] = block
    ds = StreamingDataset(
        uri,
        batch_size=BATCH,
        seed=0,
        cache_dir=str(cache),
        cache_limit=limit,
        config=config,
        **kwargs,
    )
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
                nbytes += sum(len(x.encode()) for x in batch["text"])
            else:
                rows += batch["input_ids"].shape[0]
                nbytes += batch["input_ids"].shape[0] * SEQ_LEN * 2
        return rows, nbytes, time.perf_counter() - start, first

    net0 = loopback_bytes()
    with PeakRSS() as rss:
        _, _, cold, cold_first = epoch()
        rows, nbytes, wall, first = epoch()
    return {
        "samples": rows,
        "bytes": nbytes,
        "warm_s": wall,
        "cold_s": cold,
        "first_batch_s": first,
        "cold_first_batch_s": cold_first,
        "peak_rss_mb": rss.peak / 2**20,
        "peak_pss_mb": rss.peak_pss / 2**20,
        "cache_bytes": ds.cache.cached_bytes(),
        "block": ds.block,
        "loopback": loopback_bytes() - net0,
        "shuffle_quality": shuffle_quality(ds.order()),
        "exactly_once": rows == len(ds),
    }


def run_floor_memmap(npy: str) -> dict[str, Any]:
    import numpy as np

    mm = np.load(npy, mmap_mode="r")
    np.asarray(mm).sum()  # warm the page cache, as the loaders' warm epochs are
    start = time.perf_counter()
    rows = 0
    for i in range(0, mm.shape[0], BATCH):
        batch = np.array(mm[i : i + BATCH], dtype=np.int64)
        rows += batch.shape[0]
    wall = time.perf_counter() - start
    return {"samples": rows, "warm_s": wall, "bytes": rows * SEQ_LEN * 2}


def run_floor_arrow(text_dir: str) -> dict[str, Any]:
    import pyarrow as pa

    files = sorted(Path(text_dir).glob("*.arrow"))
    for path in files:  # warm
        pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    start = time.perf_counter()
    rows = nbytes = 0
    for path in files:
        t = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        for i in range(0, t.num_rows, BATCH):
            texts = t.slice(i, BATCH).column(0).to_pylist()
            rows += len(texts)
            nbytes += sum(len(x.encode()) for x in texts)
    wall = time.perf_counter() - start
    return {"samples": rows, "warm_s": wall, "bytes": nbytes}


def run_floor_boto3(client: Any, prefix: str, samples: int) -> dict[str, Any]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    net0 = loopback_bytes()
    start = time.perf_counter()
    got = 0
    for key in keys:
        got += len(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    wall = time.perf_counter() - start
    return {
        "samples": samples,
        "warm_s": wall,
        "bytes": got,
        "object_bytes": got,
        "loopback": loopback_bytes() - net0,
    }


def run_peer(
    peer: str, kind: str, spec: dict[str, Any], workers: int, s3: dict[str, Any] | None
) -> dict[str, Any]:
    cmd = [
        str(PEERS_PY),
        str(REPO / "benchmarks" / "loader_peers.py"),
        "--kind",
        kind,
        "--source",
        spec["peer_source"],
        "--rows-per-shard",
        str(spec["rows_per_shard"]),
        "--work",
        str(DATA / "loaders-peers"),
        "--peer",
        peer,
        "--workers",
        str(workers),
        "--batch",
        str(BATCH),
        "--case-timeout",
        "150",
    ]
    env = dict(os.environ)
    if s3 is not None:
        cmd += ["--s3-endpoint", s3["endpoint"], "--bucket", BUCKET, "--prefix", "peers"]
        cmd += ["--cache-limit", str(s3["limit"])]
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = s3["keys"]
    # upload first, outside the measured traffic
    if s3 is not None:
        subprocess.run([*cmd, "--prepare-only"], env=env, check=True, stdout=subprocess.DEVNULL)
    net0 = loopback_bytes()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    traffic = loopback_bytes() - net0
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    if not lines:
        tail = out.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {out.returncode}: {tail[0][:200]}"}
    r = lines[0]
    r["loopback"] = traffic
    if r.get("warm_s"):
        r["bytes"] = r.get("bytes") or 0
    return dict(r)


# -- report ----------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("100MB"))
    ap.add_argument("--workers", default="0,2,4")
    ap.add_argument("--sources", default="local,s3")
    ap.add_argument("--kinds", default="tokens,text")
    ap.add_argument("--peers", default="mosaic,litdata")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--render", type=Path, help="only write the table from a results JSON")
    args = ap.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    specs = prepare(args.size)
    if args.render:
        write(json.loads(args.render.read_text()), specs, args)
        return 0
    worker_counts = [int(w) for w in args.workers.split(",")]
    peers = [p for p in args.peers.split(",") if p]
    if peers and not PEERS_PY.exists():
        sys.exit("the peers' environment is missing: make benchmarks/.peers/.done")
    results: list[dict[str, Any]] = []
    server = None
    scratch = Path(tempfile.mkdtemp(prefix="bench-loaders-", dir=DATA))
    try:
        for source in args.sources.split(","):
            s3: dict[str, Any] | None = None
            config = client = None
            if source == "s3":
                from datastore.s3 import make_client
                from datastore.testing import SeaweedFS

                server = SeaweedFS(scratch / "seaweedfs").start()
                config = server.config
                client = make_client(config)
                client.create_bucket(Bucket=BUCKET)
                log(f"SeaweedFS at {server.endpoint_url}")
            for kind in args.kinds.split(","):
                spec = specs[kind]
                base = {"kind": kind, "source": source}
                limit = decoded_bytes(spec, kind) // 2 if source == "s3" else None
                uri = spec["uri"]
                if source == "s3":
                    assert client is not None and server is not None
                    uri = upload(spec["uri"], client, f"ours/{kind}")
                    s3 = {
                        "endpoint": server.endpoint_url,
                        "limit": limit,
                        "keys": (server.access_key, server.secret_key),
                    }
                    log(f"{kind}/s3: floor-boto3")
                    r = run_floor_boto3(client, f"ours/{kind}/", spec["samples"])
                else:
                    log(f"{kind}/local: floor")
                    if kind == "tokens":
                        r = run_floor_memmap(spec["peer_source"])
                    else:
                        r = run_floor_arrow(spec["peer_source"])
                results.append({**base, "case": "floor", "workers": None, **r})
                # With a cache of half the data, a shuffle block must span at most about a
                # quarter of it (its shards, plus the next ones prefetched, stay cached): our
                # loader warns otherwise. The default block (the whole epoch here) is measured
                # once too, with 0 workers.
                block = spec["samples"] // 4 if source == "s3" else None
                if source == "s3":
                    log(f"{kind}/{source}: ours, default block, 0 workers")
                    cache = scratch / f"cache-{kind}-{source}-default"
                    r = run_ours(kind, uri, 0, cache, config, limit)
                    shutil.rmtree(cache, ignore_errors=True)
                    results.append({**base, "case": "ours-default-block", "workers": 0, **r})
                for w in worker_counts:
                    log(f"{kind}/{source}: ours, {w} workers")
                    cache = scratch / f"cache-{kind}-{source}-{w}"
                    r = run_ours(kind, uri, w, cache, config, limit, block)
                    shutil.rmtree(cache, ignore_errors=True)
                    results.append({**base, "case": "ours", "workers": w, **r})
                    log(f"  {r['samples'] / r['warm_s']:,.0f} samples/s")
                    for peer in peers:
                        log(f"{kind}/{source}: {peer}, {w} workers")
                        r = run_peer(peer, kind, spec, w, s3)
                        results.append({**base, "case": peer, "workers": w, **r})
                        if r.get("error"):
                            log(f"  error: {r['error']}")
                        else:
                            log(f"  {r['samples'] / r['warm_s']:,.0f} samples/s")
            if server is not None:
                server.stop()
                server = None
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    (DATA / "loaders-results.json").write_text(json.dumps(results, indent=1))
    write(results, specs, args)
    return 0


def _rate(r: dict[str, Any] | None) -> float | None:
    if not r or r.get("error") or not r.get("warm_s") or not r.get("samples"):
        return None
    return float(r["samples"]) / float(r["warm_s"])


def _x(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def write(results: list[dict[str, Any]], specs: dict[str, Any], args: argparse.Namespace) -> None:
    import psutil

    def find(kind: str, source: str, case: str, w: int | None) -> dict[str, Any] | None:
        for r in results:
            if (r["kind"], r["source"], r["case"], r["workers"]) == (kind, source, case, w):
                return r
        return None

    lines = [
        "# Loader benchmark: ours vs MosaicML streaming and LitData, and raw-read floors",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: "
        f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"Python {platform.python_version()}. Command: `.venv/bin/python "
        f"benchmarks/bench_loaders.py --size {size_label(args.size)}` (peers in "
        "`benchmarks/.peers`: see `loader_peers.py`). Batch 32, shuffled, second (warm) "
        "epoch measured; S3 = SeaweedFS on loopback with a local cache of half the dataset "
        "(ours with a shuffle block of a quarter of the samples there, so that a block's "
        "shards fit that cache; `ours-default-block`: the whole epoch as one block).",
        "",
    ]
    for kind, spec in specs.items():
        lines.append(
            f"- {kind}: {spec['samples']:,} samples in {spec['shards']} shards "
            f"({spec['rows_per_shard']:,} rows per shard{' on average' if kind == 'text' else ''})"
        )
    lines += [
        "",
        "## Throughput (samples/s, warm epoch) and ratios",
        "",
        "| data | source | workers | ours | mosaic | litdata | floor | ours/mosaic "
        "| ours/litdata | ours/floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    kinds = args.kinds.split(",")
    for kind in kinds:
        for source in args.sources.split(","):
            floor = _rate(find(kind, source, "floor", None))
            for w in [int(x) for x in args.workers.split(",")]:
                ours = _rate(find(kind, source, "ours", w))
                mosaic = _rate(find(kind, source, "mosaic", w))
                lit = _rate(find(kind, source, "litdata", w))

                def cell(
                    v: float | None, case: str, w: int = w, source: str = source, kind: str = kind
                ) -> str:
                    if v is not None:
                        return f"{v:,.0f}"
                    r = find(kind, source, case, w)
                    if r and str(r.get("error", "")).startswith("timed out"):
                        return "timed out"
                    return "crashed" if r and r.get("error") else "n/a"

                lines.append(
                    f"| {kind} | {source} | {w} | {cell(ours, 'ours')} | "
                    f"{cell(mosaic, 'mosaic')} | {cell(lit, 'litdata')} | "
                    f"{f'{floor:,.0f}' if floor else 'n/a'} | {_x(ours, mosaic)} | "
                    f"{_x(ours, lit)} | {_x(ours, floor)} |"
                )
    lines += [
        "",
        "## Details",
        "",
        "GB/s: stored bytes delivered per second (token rows 4 KiB each; text: UTF-8 bytes). "
        "S3 read: bytes fetched from the server over both epochs, in units of the loader's own "
        "stored dataset (calibrated loopback traffic; with a cache of half the data the ideal "
        "is about 1.5). Shuffle: distinct source shards per 256 consecutive samples.",
        "",
        "| data | source | case | workers | samples/s | GB/s | first batch s | cold epoch s "
        "| peak PSS MiB | peak RSS MiB | cache MiB | S3 read | shuffle | exactly once | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rate = _rate(r)
        source = r["source"]
        floor = find(r["kind"], "s3", "floor", None) if source == "s3" else None
        factor = None
        if floor and floor.get("object_bytes"):
            factor = floor["loopback"] / floor["object_bytes"]
        stored = None
        if r["case"].startswith("ours") or r["case"] == "floor":
            stored = floor.get("object_bytes") if floor else None
        elif r.get("stored_bytes"):
            stored = r["stored_bytes"]
        s3_read = "n/a"
        if source == "s3" and factor and stored and r.get("loopback") and r["case"] != "floor":
            s3_read = f"{r['loopback'] / factor / stored:.2f}"
        gbs = f"{r['bytes'] / r['warm_s'] / 1e9:.2f}" if rate and r.get("bytes") else "n/a"
        cache = r.get("cache_bytes")
        sq = r.get("shuffle_quality")
        workers = r["workers"] if r["workers"] is not None else "-"
        lines.append(
            f"| {r['kind']} | {source} | {r['case']} | {workers} "
            f"| {f'{rate:,.0f}' if rate else 'n/a'} | {gbs} "
            f"| {r.get('first_batch_s', 0) or 0:.2f} | {r.get('cold_s', 0) or 0:.2f} "
            f"| {r.get('peak_pss_mb', 0) or 0:,.0f} | {r.get('peak_rss_mb', 0) or 0:,.0f} "
            f"| {f'{cache / 2**20:,.0f}' if cache is not None else '-'} | {s3_read} "
            f"| {f'{sq:.1f}' if sq is not None else '-'} | {r.get('exactly_once', '-')} "
            f"| {(r.get('error') or '')[:120]} |"
        )
    lines += [
        "",
        "Not measured here: the DALI GPU path (no GPU on this machine; "
        "`benchmarks/bench_dali_gpu.py` measures it on a GPU host and writes "
        "`results/loaders-dali-gpu.md`).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
