"""Loader benchmark, peers: MosaicML ``streaming`` and ``litdata`` on the data that
``bench_loaders.py`` measures ours on, each used the way its docs recommend for training.

Runs in its own virtual environment (``make benchmarks/.peers/.done``), never the project's:
the peers pin versions that conflict with ours, so this script imports no Shardyard package.

    benchmarks/.peers/bin/python benchmarks/loader_peers.py --kind tokens \\
        --source tokens.npy --rows-per-shard 2048 --work benchmarks/.data/peers \\
        --peer mosaic --workers 0,2,4 [--s3-endpoint URL --bucket B --prefix P] [--cache-limit N]

What it does:

1. Writes the source once into the peer's own format under ``--work`` (reused by later runs
   while the source is unchanged), with the same shard boundaries as ours: sample ``i`` is in
   shard ``i // rows_per_shard``. Every sample carries its global index in an int column
   ``idx`` beside ``tokens`` (uint16 array) or ``text`` (str).
   * Mosaic: one ``MDSWriter`` per group of ``rows_per_shard`` samples (each writes one
     shard into its own subfolder), then ``streaming.base.util.merge_index``: Mosaic's
     documented parallel-conversion pattern; ``MDSWriter`` itself only breaks shards by bytes.
   * LitData: ``litdata.optimize`` with one input per sample, ``chunk_size=rows_per_shard``,
     ``align_chunking=True`` and ``keep_data_ordered=True`` (chunks as a single worker lays
     them out, whatever the number of build workers).
   The shard sizes in the written index are checked against the expected ones
   (``shards_exact``).
2. With ``--s3-endpoint``, uploads that folder to ``s3://BUCKET/PREFIX/<peer>/<name>/``
   (``index.json`` last; skipped when the same ``index.json`` is already there) and streams
   from it through a fresh local cache folder under ``--work`` (credentials from
   ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``). Custom endpoints: Mosaic reads the
   ``S3_ENDPOINT_URL`` environment variable; LitData takes
   ``storage_options={"endpoint_url": ...}`` (handed to its boto3 client; its obstore
   prefetch path copies the endpoint from that client, but cannot be told to allow plain
   ``http://``: for such endpoints this script adds ``allow_http`` to LitData's obstore client
   options, see ``allow_plain_http_for_litdata``). ``--cache-limit`` goes to Mosaic's
   ``cache_limit`` and LitData's ``max_cache_size``.
3. For each worker count, in a fresh child process (so a crash, a hang or leaked shared memory
   of one case cannot take down or skew the others): ``StreamingDataset(..., shuffle=True)``
   under the peer's ``StreamingDataLoader(batch_size, num_workers)``, ``--epochs`` epochs. The
   first epoch is the cold one (a fresh dataset object and, on S3, an empty cache; locally the
   OS page cache is not dropped); the last one is reported as warm.

One JSON object per case on stdout (everything else, the peers' own output included, goes to
stderr)::

    peer, kind, source ("local" | "s3"), workers, samples (received in the warm epoch),
    expected_samples, bytes (per epoch: rows*width*2 for tokens, UTF-8 bytes of the texts),
    exactly_once (every index exactly once in every epoch), warm_s, cold_s, first_batch_s,
    cold_first_batch_s, peak_rss_mb (sum of RSS over the case process and its children,
    polled every 0.1 s; shared pages count once per process), peak_pss_mb (the same with
    PSS, shared pages split between their processes), cache_bytes (bytes in the cache
    folder after the run; null when reading local data, which needs none), cache_limit,
    shuffle_quality / cold_shuffle_quality (mean number of distinct source shards,
    idx // rows_per_shard, in consecutive non-overlapping windows of 256 samples, in the
    order the training loop receives them: the measure of ``loaders.plan.shuffle_quality``),
    reshuffled (whether the warm epoch's order differs from the cold one's),
    shards, shards_exact, build_s (time the peer took to write its format, possibly in an
    earlier run), error (null, or one line when the case failed).

Mosaic 0.13 imports ``streaming.vision`` (torchvision) on ``import streaming``. The only
torchvision wheel that matches torch 2.13 here is a CUDA build that cannot load beside the
CPU torch, so the venv has none, and this script registers an empty ``streaming.vision``
module before importing ``streaming`` when torchvision is missing (no vision dataset is used).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import types
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1  # bump when the written peer datasets change
WINDOW = 256  # shuffle-quality window, as in loaders.plan.shuffle_quality
PEERS = ("mosaic", "litdata")
KINDS = ("tokens", "text")
OUT = sys.stdout  # replaced in main() by the real stdout, once fd 1 points at stderr


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """``1073741824``, ``512MB``, ``2GiB`` -> bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    units |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    s = text.strip().upper()
    num = s.rstrip("KMGTIB")
    unit = s[len(num) :]
    if unit not in units or not num:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(float(num) * units[unit])


# ---------------------------------------------------------------- the source data


class Source:
    """The benchmark's data in global sample order: token rows of a ``.npy`` file, or the
    ``text`` column of the sorted ``*.arrow`` files of a folder, concatenated."""

    def __init__(self, kind: str, path: str) -> None:
        self.kind = kind
        self.path = Path(path)
        if kind == "tokens":
            self.tokens = np.load(self.path, mmap_mode="r")
            if self.tokens.ndim != 2 or self.tokens.dtype != np.uint16:
                raise ValueError(
                    f"{path}: want a 2-D uint16 array, got {self.tokens.dtype}{self.tokens.shape}"
                )
            self.files = [self.path]
            self.rows = int(self.tokens.shape[0])
            self.width = int(self.tokens.shape[1])
        else:
            import pyarrow as pa

            self.files = sorted(self.path.glob("*.arrow"))
            if not self.files:
                raise ValueError(f"{path}: no *.arrow files")
            self.columns: list[Any] = []
            for f in self.files:
                source = pa.memory_map(str(f))
                try:
                    table = pa.ipc.open_file(source).read_all()
                except pa.ArrowInvalid:  # the streaming IPC format
                    table = pa.ipc.open_stream(pa.memory_map(str(f))).read_all()
                self.columns.append(table.column("text"))
            sizes = [len(c) for c in self.columns]
            self.starts = np.cumsum([0, *sizes])
            self.rows = int(self.starts[-1])
            self.width = 0

    def fingerprint(self, rows_per_shard: int) -> str:
        h = hashlib.sha256(f"{FORMAT_VERSION}|{self.kind}|{rows_per_shard}".encode())
        for f in self.files:
            st = f.stat()
            h.update(f"|{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:12]

    def sample(self, i: int) -> dict[str, Any]:
        if self.kind == "tokens":
            return {"idx": i, "tokens": np.array(self.tokens[i])}
        f = int(np.searchsorted(self.starts, i, side="right")) - 1
        return {"idx": i, "text": self.columns[f][i - int(self.starts[f])].as_py()}

    def samples(self, start: int, stop: int) -> Iterator[dict[str, Any]]:
        if self.kind == "tokens":
            block = np.array(self.tokens[start:stop])
            for j, row in enumerate(block):
                yield {"idx": start + j, "tokens": row}
            return
        for f, col in enumerate(self.columns):
            lo, hi = int(self.starts[f]), int(self.starts[f + 1])
            if hi <= start or lo >= stop:
                continue
            a, b = max(start, lo), min(stop, hi)
            for j, text in enumerate(col.slice(a - lo, b - a).to_pylist()):
                yield {"idx": a + j, "text": text}

    def nbytes(self) -> int:
        """Bytes of one epoch, as the loop counts them."""
        if self.kind == "tokens":
            return self.rows * self.width * 2
        import pyarrow.compute as pc

        return int(sum(pc.sum(pc.binary_length(c)).as_py() or 0 for c in self.columns))


_SOURCES: dict[tuple[str, str], Source] = {}


def open_source(kind: str, path: str) -> Source:
    """One :class:`Source` per process (build workers open their own)."""
    key = (kind, path)
    if key not in _SOURCES:
        _SOURCES[key] = Source(kind, path)
    return _SOURCES[key]


# ---------------------------------------------------------------- the peers' formats


def import_mosaic() -> Any:
    """``import streaming``, without its torchvision-only ``streaming.vision`` when the
    venv has no torchvision (see the module docstring)."""
    if importlib.util.find_spec("torchvision") is None:
        sys.modules.setdefault("streaming.vision", types.ModuleType("streaming.vision"))
    import streaming

    return streaming


@dataclass
class Built:
    """A peer dataset written under ``--work``: its folder and what the marker recorded."""

    path: str
    name: str
    samples: int
    bytes: int
    shards: int
    shards_exact: bool
    build_s: float


def expected_sizes(rows: int, n: int) -> list[int]:
    return [min(n, rows - s) for s in range(0, rows, n)]


def _mds_group(task: tuple[str, str, str, int, int, dict[str, str]]) -> None:
    kind, src, out, start, stop, columns = task
    streaming = import_mosaic()
    source = open_source(kind, src)
    with streaming.MDSWriter(out=out, columns=columns, size_limit=2**32 - 1) as w:
        for s in source.samples(start, stop):
            w.write(s)


def build_mosaic(source: Source, src: str, out: Path, n: int, workers: int) -> list[int]:
    import_mosaic()
    from streaming.base.util import merge_index

    data = "tokens" if source.kind == "tokens" else "text"
    enc = f"ndarray:uint16:{source.width}" if source.kind == "tokens" else "str"
    columns = {"idx": "int64", data: enc}
    groups = [(g, s, min(s + n, source.rows)) for g, s in enumerate(range(0, source.rows, n))]
    tasks = [(source.kind, src, str(out / f"{g:06d}"), a, b, columns) for g, a, b in groups]
    if workers > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            list(pool.map(_mds_group, tasks, chunksize=1))
    else:
        for t in tasks:
            _mds_group(t)
    merge_index([str(out / f"{g:06d}" / "index.json") for g, _, _ in groups], str(out))
    index = json.loads((out / "index.json").read_text())
    return [int(s["samples"]) for s in index["shards"]]


def _litdata_item(i: int) -> dict[str, Any]:
    return open_source(_LITDATA_TASK["kind"], _LITDATA_TASK["src"]).sample(i)


_LITDATA_TASK: dict[str, str] = {}


def build_litdata(source: Source, src: str, out: Path, n: int, workers: int) -> list[int]:
    import litdata

    _LITDATA_TASK.update(kind=source.kind, src=src)  # inherited by the forked build workers
    litdata.optimize(
        fn=_litdata_item,
        inputs=list(range(source.rows)),
        output_dir=str(out),
        chunk_size=n,
        align_chunking=True,
        keep_data_ordered=True,
        num_workers=max(1, workers),
        start_method="fork",
    )
    index = json.loads((out / "index.json").read_text())
    return [int(c["chunk_size"]) for c in index["chunks"]]


def prepare(args: argparse.Namespace) -> Built:
    """The peer's copy of ``--source`` under ``--work``, written unless already complete."""
    source = open_source(args.kind, str(args.source))
    name = f"{args.kind}-{source.fingerprint(args.rows_per_shard)}-n{args.rows_per_shard}"
    root = Path(args.work) / args.peer
    out, marker = root / name, root / f"{name}.done.json"
    if marker.exists() and (out / "index.json").exists():
        log(f"{args.peer}: reusing {out}")
        return Built(**json.loads(marker.read_text()))
    shutil.rmtree(out, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    log(f"{args.peer}: writing {source.rows:,} {args.kind} samples to {out}")
    build = build_mosaic if args.peer == "mosaic" else build_litdata
    t0 = time.perf_counter()
    sizes = build(source, str(args.source), out, args.rows_per_shard, args.build_workers)
    built = Built(
        path=str(out),
        name=name,
        samples=sum(sizes),
        bytes=source.nbytes(),
        shards=len(sizes),
        shards_exact=sizes == expected_sizes(source.rows, args.rows_per_shard),
        build_s=round(time.perf_counter() - t0, 3),
    )
    if sum(sizes) != source.rows:
        raise RuntimeError(f"{args.peer} wrote {sum(sizes)} samples of {source.rows}")
    log(f"{args.peer}: {built.shards} shards (exact: {built.shards_exact}) in {built.build_s} s")
    marker.write_text(json.dumps(asdict(built)))
    return built


# ---------------------------------------------------------------- S3


def s3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5})
    return boto3.client("s3", endpoint_url=endpoint, config=cfg)


def upload(built: Built, args: argparse.Namespace) -> str:
    """Copy the peer dataset to S3 (``index.json`` last) unless it is already there."""
    client = s3_client(args.s3_endpoint)
    prefix = "/".join(p for p in (args.prefix.strip("/"), args.peer, built.name) if p)
    url = f"s3://{args.bucket}/{prefix}"
    local = Path(built.path)
    index = (local / "index.json").read_bytes()
    try:
        if client.get_object(Bucket=args.bucket, Key=f"{prefix}/index.json")["Body"].read() == (
            index
        ):
            log(f"{args.peer}: already at {url}")
            return url
    except client.exceptions.NoSuchKey:
        pass
    try:
        client.head_bucket(Bucket=args.bucket)
    except Exception:
        client.create_bucket(Bucket=args.bucket)
    files = [p for p in sorted(local.rglob("*")) if p.is_file() and p.name != "index.json"]
    log(f"{args.peer}: uploading {len(files) + 1} files to {url}")
    t0 = time.perf_counter()

    def put(p: Path) -> None:
        client.upload_file(str(p), args.bucket, f"{prefix}/{p.relative_to(local).as_posix()}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, files))
    put(local / "index.json")
    log(f"{args.peer}: uploaded in {time.perf_counter() - t0:.1f} s")
    return url


# ---------------------------------------------------------------- one measured case


class PeakRss:
    """Polls the RSS and PSS of this process plus all its descendants; keeps the largest
    sums (RSS counts a page shared by N processes N times, PSS 1/N times in each)."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        import psutil

        rss = pss = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                info = p.memory_full_info()  # reads /proc/PID/smaps_rollup
            except psutil.Error:  # a worker that just exited
                continue
            rss += info.rss
            pss += info.pss
        self.peak = max(self.peak, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakRss:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def dir_bytes(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(path) for f in files)


def shuffle_quality(order: np.ndarray, rows_per_shard: int) -> float:
    """Mean number of distinct shards in consecutive windows of ``WINDOW`` samples."""
    n = (len(order) // WINDOW) * WINDOW
    if n == 0:
        return 0.0
    grid = np.sort(order[:n].reshape(-1, WINDOW) // rows_per_shard, axis=1)
    return float((1 + (np.diff(grid, axis=1) != 0).sum(axis=1)).mean())


def allow_plain_http_for_litdata(endpoint: str) -> None:
    """LitData 0.2.76 fetches chunks through obstore, built with fixed client options that
    lack ``allow_http`` (and replace any from the environment), so an ``http://`` endpoint
    fails with "HTTP error: builder error" (reqwest ``BadScheme``). Add it to those options
    (module-level, inherited by forked DataLoader workers); ``https://`` needs nothing."""
    if not endpoint.startswith("http://"):
        return
    from litdata.streaming import downloader

    options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
    if isinstance(options, dict):
        downloader._OBSTORE_CLIENT_OPTIONS = {**options, "allow_http": True}
        log("litdata: allow_http added to its obstore client options (plain-http endpoint)")
    else:
        log("litdata: no _OBSTORE_CLIENT_OPTIONS in this version; plain-http fix not applied")


def one_line(err: BaseException) -> str:
    """``Type: first line``, plus the last line when the message has several (a DataLoader
    worker's error carries the original one at its end)."""
    lines = [x.strip() for x in str(err).splitlines() if x.strip()]
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    if len(lines) > 1:
        text += f" ... {lines[-1]}"
    return text[:600]


def make_loader(spec: dict[str, Any], cache: Path) -> Any:
    """The peer's dataset and loader as its docs show them for training."""
    remote = spec["remote"]
    if spec["peer"] == "mosaic":
        streaming = import_mosaic()
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
        if remote:
            os.environ["S3_ENDPOINT_URL"] = spec["endpoint"]
        ds = streaming.StreamingDataset(
            local=str(cache) if remote else spec["path"],
            remote=remote,
            shuffle=True,
            shuffle_seed=spec["seed"],
            batch_size=spec["batch"],
            cache_limit=spec["cache_limit"] if remote else None,
        )
        # For the parent's clean-up of this dataset's shared memory and filelocks.
        Path(spec["result"] + ".shm").write_text(str(ds._shm_prefix_int))
        return streaming.StreamingDataLoader(
            ds, batch_size=spec["batch"], num_workers=spec["workers"]
        )
    import litdata

    kwargs: dict[str, Any] = {}
    if remote:
        allow_plain_http_for_litdata(spec["endpoint"])
        kwargs["cache_dir"] = str(cache)
        kwargs["storage_options"] = {"endpoint_url": spec["endpoint"]}
        if spec["cache_limit"] is not None:
            kwargs["max_cache_size"] = spec["cache_limit"]
    ds = litdata.StreamingDataset(remote or spec["path"], shuffle=True, seed=spec["seed"], **kwargs)
    return litdata.StreamingDataLoader(ds, batch_size=spec["batch"], num_workers=spec["workers"])


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one (peer, workers) case; runs in its own process."""
    cache = Path(spec["cache"])
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    result: dict[str, Any] = {}
    expected = spec["expected_samples"]
    with PeakRss() as rss:
        loader = make_loader(spec, cache)
        epochs: list[dict[str, Any]] = []
        orders: list[np.ndarray] = []
        for e in range(spec["epochs"]):
            seen: list[np.ndarray] = []
            nbytes = 0
            first = 0.0
            t0 = time.perf_counter()
            for batch in loader:
                if not first:
                    first = time.perf_counter() - t0
                seen.append(np.asarray(batch["idx"], dtype=np.int64).reshape(-1))
                if spec["kind"] == "tokens":
                    t = batch["tokens"]
                    nbytes += int(t.numel()) * t.element_size()
                else:
                    nbytes += sum(len(s.encode()) for s in batch["text"])
            wall = time.perf_counter() - t0
            order = np.concatenate(seen) if seen else np.zeros(0, np.int64)
            orders.append(order)
            once = len(order) == expected and bool(
                (np.bincount(order, minlength=expected) == 1).all()
            )
            epochs.append(
                {
                    "wall": wall,
                    "first": first,
                    "samples": len(order),
                    "bytes": nbytes,
                    "once": once,
                    "quality": shuffle_quality(order, spec["rows_per_shard"]),
                }
            )
            log(
                f"{spec['peer']} {spec['kind']} w{spec['workers']} epoch {e}: "
                f"{len(order):,} samples in {wall:.2f} s (first batch {first:.2f} s), "
                f"exactly once: {once}"
            )
        del loader
    cold, warm = epochs[0], epochs[-1] if len(epochs) > 1 else None
    result.update(
        samples=(warm or cold)["samples"],
        bytes=(warm or cold)["bytes"],
        exactly_once=all(x["once"] for x in epochs),
        warm_s=round(warm["wall"], 4) if warm else None,
        cold_s=round(cold["wall"], 4),
        first_batch_s=round(warm["first"], 4) if warm else None,
        cold_first_batch_s=round(cold["first"], 4),
        peak_rss_mb=round(rss.peak / 2**20, 1),
        peak_pss_mb=round(rss.peak_pss / 2**20, 1),
        cache_bytes=dir_bytes(cache) if spec["remote"] else None,
        shuffle_quality=round(warm["quality"], 3) if warm else None,
        cold_shuffle_quality=round(cold["quality"], 3),
        reshuffled=None if warm is None else not np.array_equal(orders[0], orders[-1]),
    )
    if spec["peer"] == "mosaic":
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
    shutil.rmtree(cache, ignore_errors=True)
    return result


def case_main(spec_json: str) -> int:
    """Child-process entry: run one case, write its result to ``spec['result']``."""
    spec = json.loads(spec_json)
    try:
        out: dict[str, Any] = run_case(spec)
    except BaseException as err:  # reported, not raised: the parent prints one line per case
        traceback.print_exc()
        out = {"error": one_line(err)}
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


def release_mosaic_shm(spec: dict[str, Any]) -> None:
    """Remove the shared memory and ``/tmp`` filelocks of a finished Mosaic case.

    A killed or crashed case leaves ``/dev/shm/NNNNNN_*`` behind, and
    ``clean_stale_shared_memory()`` only walks prefixes up from 0 to the first one with
    nothing leaked, so it misses them; a rerun on the same cache folder then fails with
    "Reused local directory". Mosaic also never deletes its two ``<tmp>/NNNNNN_*_filelock``
    files, even after a clean run. The case wrote its prefix ``NNNNNN`` to a side file."""
    import tempfile

    import_mosaic()
    from streaming.base.constant import BARRIER_FILELOCK, CACHE_FILELOCK, SHM_TO_CLEAN

    side = Path(spec["result"] + ".shm")
    if not side.exists():
        return
    prefix = int(side.read_text())
    side.unlink()
    paths = [Path("/dev/shm") / f"{prefix:06}_{name}" for name in SHM_TO_CLEAN]
    paths += [
        Path(tempfile.gettempdir()) / f"{prefix:06}_{name}"
        for name in (BARRIER_FILELOCK, CACHE_FILELOCK)
    ]
    for path in paths:
        path.unlink(missing_ok=True)


def spawn_case(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one case in a child process (its own process group); its output goes to stderr."""
    result = Path(spec["result"])
    result.unlink(missing_ok=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--case", json.dumps(spec)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    tail: collections.deque[str] = collections.deque(maxlen=30)

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            sys.stderr.write(line)
            if line.strip():
                tail.append(line.strip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(5)
        return {"error": f"timed out after {timeout:.0f} s"}
    reader.join(5)
    try:  # DataLoader workers left behind by a crashed case
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if result.exists():
        out: dict[str, Any] = json.loads(result.read_text())
        result.unlink()
        return out
    how = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
    last = tail[-1] if tail else "no output"
    return {"error": f"case process died ({how}): {last}"[:500]}


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    first = (__doc__ or "").split("\n\n")[0]
    ap = argparse.ArgumentParser(description=" ".join(first.replace("``", "").split()))
    ap.add_argument("--kind", choices=KINDS)
    ap.add_argument("--source", type=Path, help="tokens: .npy (rows, 2048) uint16; text: dir")
    ap.add_argument("--rows-per-shard", type=int, help="samples per shard, as in ours")
    ap.add_argument("--work", type=Path, help="peer datasets and caches live here")
    ap.add_argument("--peer", choices=PEERS)
    ap.add_argument("--workers", default="0,2,4", help="DataLoader worker counts, e.g. 0,2,4")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2, help="the first is cold, the last warm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--s3-endpoint", help="stream from this S3 endpoint (else read local)")
    ap.add_argument("--bucket")
    ap.add_argument("--prefix", default="")
    ap.add_argument("--cache-limit", type=parse_size, help="local cache bytes when on S3")
    ap.add_argument(
        "--build-workers", type=int, default=min(4, os.cpu_count() or 1), help="for writing"
    )
    ap.add_argument("--case-timeout", type=float, default=3600.0, help="seconds per case")
    ap.add_argument(
        "--prepare-only", action="store_true", help="write (and upload) the dataset, then exit"
    )
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case is None:
        need = ("kind", "source", "rows_per_shard", "work", "peer")
        missing = [f"--{n.replace('_', '-')}" for n in need if getattr(args, n) is None]
        if args.s3_endpoint and not args.bucket:
            missing.append("--bucket")
        if missing:
            ap.error(f"missing {', '.join(missing)}")
        if args.rows_per_shard < 1 or args.epochs < 1 or args.batch < 1:
            ap.error("--rows-per-shard, --epochs and --batch must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    global OUT
    args = parse_args(argv)
    # Results go to the real stdout; fd 1 (and so anything the peers print, also from their
    # worker processes) goes to stderr.
    OUT = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if args.case is not None:
        return case_main(args.case)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    source_kind = "s3" if args.s3_endpoint else "local"
    base: dict[str, Any] = {
        "peer": args.peer,
        "kind": args.kind,
        "source": source_kind,
    }
    try:
        built = prepare(args)
        remote = upload(built, args) if args.s3_endpoint else None
    except Exception as err:
        traceback.print_exc()
        msg = f"preparing: {one_line(err)}"
        for w in workers:
            print(json.dumps({**base, "workers": w, "error": msg}), file=OUT)
        return 1
    if args.prepare_only:
        return 0
    work = Path(args.work).resolve()
    for w in workers:
        spec = {
            "peer": args.peer,
            "kind": args.kind,
            "workers": w,
            "batch": args.batch,
            "epochs": args.epochs,
            "seed": args.seed,
            "rows_per_shard": args.rows_per_shard,
            "expected_samples": built.samples,
            "path": built.path,
            "remote": remote,
            "endpoint": args.s3_endpoint,
            "cache_limit": args.cache_limit,
            "cache": str(work / "cache" / f"{args.peer}-{args.kind}-{source_kind}-w{w}"),
            "result": str(work / f".result-{os.getpid()}-{args.peer}-w{w}.json"),
        }
        log(f"case: {args.peer} {args.kind} {source_kind} workers={w}")
        measured = spawn_case(spec, args.case_timeout)
        if args.peer == "mosaic":
            release_mosaic_shm(spec)
        line: dict[str, Any] = {
            **base,
            "workers": w,
            "samples": None,
            "expected_samples": built.samples,
            "bytes": None,
            "exactly_once": None,
            "warm_s": None,
            "cold_s": None,
            "first_batch_s": None,
            "cold_first_batch_s": None,
            "peak_rss_mb": None,
            "peak_pss_mb": None,
            "cache_bytes": None,
            "cache_limit": args.cache_limit,
            "shuffle_quality": None,
            "cold_shuffle_quality": None,
            "reshuffled": None,
            "shards": built.shards,
            "stored_bytes": sum(
                p.stat().st_size for p in Path(built.path).rglob("*") if p.is_file()
            ),
            "shards_exact": built.shards_exact,
            "build_s": built.build_s,
            "error": None,
        }
        line.update(measured)
        print(json.dumps(line), file=OUT)
    if args.peer == "mosaic":
        import_mosaic()
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
    return 0


if __name__ == "__main__":
    sys.exit(main())
