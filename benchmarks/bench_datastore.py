"""Storage benchmark: write and fully scan a table dataset, ours vs. plain floors, same run.

For each of {Parquet (zstd), Arrow IPC} x {local directory, SeaweedFS S3} this writes one
~``--size-gib`` GiB table with :class:`datastore.DatasetWriter` (default 256 MiB shards) and scans
it back whole with ``open_dataset(...).to_table()`` (``verify_reads=True``: every shard's xxh3-128
is checked), and runs the floors on the same in-memory table in the same process:

* local: ``pyarrow.parquet.write_table`` / ``read_table`` (zstd) or Arrow IPC file write / read,
  split into the same row ranges as our shards, to the same filesystem; the write floor is timed
  without and with ``fsync`` (ours always fsyncs);
* S3: raw boto3 ``put_object`` / ``get_object`` of exactly our shard bytes (a transfer-only
  floor: no encoding or decoding), and ``pyarrow.fs.S3FileSystem`` writing / reading the same
  split as Parquet or Arrow IPC (encode + transfer, like ours).

Throughput is reported in GB/s (10^9 bytes/s) of *logical* bytes (``table.nbytes``, the
uncompressed Arrow size, identical for every implementation) and of *stored* bytes (what that
implementation put on storage). ``ours/floor`` is ``floor seconds / our seconds`` (the same on
either byte count). Each operation runs ``--repeats`` times, ours and floors interleaved with
the order rotated every repeat; the best (shortest) time of each is reported. Scans are timed
warm (straight after the write, page cache as the write left it) and, where
``/proc/sys/vm/drop_caches`` is writable, cold (``sync; echo 3 > drop_caches`` before each scan;
on S3 that empties the SeaweedFS volume files from the cache, not the server's own memory).

Run: ``.venv/bin/python benchmarks/bench_datastore.py --size-gib 1``
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import gzip
import mmap
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import botocore
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import xxhash
from botocore.config import Config

import datastore
from datastore import DatasetWriter, StorageConfig, TableDataset, open_dataset
from datastore.testing import SeaweedFS
from datastore.testing.seaweedfs import weed_binary
from datastore.writer import DEFAULT_ROW_GROUP_BYTES, DEFAULT_SHARD_SIZE

GIB = 1024**3
GB = 1e9
BUCKET = "bench"
CORPUS_DIRS = ("/usr/share/doc", "/usr/share/man")
REPO = Path(__file__).resolve().parent.parent
# The Content-Type DatasetWriter gives shards on S3; the S3 floors send the same, so that the
# server does the same work for everyone (SeaweedFS gzips objects it sniffs as text otherwise).
CONTENT_TYPE = {
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.file",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- data -------------------------------------------------------------------------------------


def load_corpus(limit: int) -> tuple[bytes, np.ndarray, list[str]]:
    """Real text (docs, changelogs, man pages; .gz unpacked), valid UTF-8, up to ``limit`` bytes.

    Returns the concatenation, the start offset of each file in it (plus the end), and names.
    """
    parts: list[bytes] = []
    names: list[str] = []
    total = 0
    for root in CORPUS_DIRS:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    continue
                try:
                    if name.endswith(".gz"):
                        with gzip.open(path) as fh:
                            data = fh.read()
                    else:
                        with open(path, "rb") as fh:
                            data = fh.read()
                    data.decode("utf-8")
                except (OSError, UnicodeDecodeError, EOFError):
                    continue
                if len(data) < 200 or b"\0" in data:
                    continue
                parts.append(data + b"\n")
                names.append(os.path.relpath(path, "/usr/share"))
                total += len(data) + 1
                if total >= limit:
                    break
            if total >= limit:
                break
        if total >= limit:
            break
    if not parts:
        raise SystemExit(f"no text found under {CORPUS_DIRS} to build the benchmark data from")
    bounds = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=bounds[1:])
    return b"".join(parts), bounds, names


def make_table(target_bytes: int, seed: int = 0, batch_rows: int = 8192) -> pa.Table:
    """An LLM-pretraining-corpus-like table of about ``target_bytes`` (Arrow ``nbytes``).

    Each row is a document: a slice of a real text file starting at a random place, with a
    log-normal length (median ~1.5 KB, 40 B..200 KB), cut at UTF-8 character boundaries, plus an
    id, its source path, a URL, byte/token counts, a quality score and a timestamp.
    """
    blob, bounds, names = load_corpus(min(512 * 1024 * 1024, max(64 << 20, target_bytes // 2)))
    log(f"corpus: {len(names)} files, {len(blob) / 1e6:.0f} MB of text from {CORPUS_DIRS}")
    raw = np.frombuffer(blob, dtype=np.uint8)
    cont = (raw & 0xC0) == 0x80  # UTF-8 continuation bytes: never cut before one
    view = memoryview(blob)
    names_arr = pa.array(names, pa.string())
    rng = np.random.default_rng(seed)
    batches: list[pa.RecordBatch] = []
    total = 0
    next_id = 0
    t0 = 1_600_000_000_000
    while total < target_bytes:
        n = batch_rows
        length = np.clip(rng.lognormal(np.log(1500), 1.1, n), 40, 200_000).astype(np.int64)
        start = rng.integers(0, len(blob) - 1, n)
        file_idx = np.searchsorted(bounds, start, side="right") - 1
        end = np.minimum(start + length, bounds[file_idx + 1])
        for _ in range(4):
            start = np.where(cont[start], start + 1, start)
            end = np.where((end < len(blob)) & cont[np.minimum(end, len(blob) - 1)], end + 1, end)
        end = np.maximum(end, start)
        lens = end - start
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lens, out=offsets[1:])
        values = b"".join([view[s:e] for s, e in zip(start.tolist(), end.tolist(), strict=True)])
        text = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(values))
        source = pc.take(names_arr, pa.array(file_idx))
        url = pc.binary_join_element_wise(
            "https://corpus.example.org/", source, pa.array(start.astype(str)), ""
        )
        ids = np.arange(next_id, next_id + n, dtype=np.int64)
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(ids),
                text,
                source,
                url,
                pa.array(lens.astype(np.int32)),
                pa.array((lens / 4.2 * rng.uniform(0.8, 1.2, n)).astype(np.int32)),
                pa.array(rng.beta(2.0, 5.0, n).astype(np.float32)),
                pa.array(t0 + np.sort(rng.integers(0, 10**9, n)), pa.timestamp("ms")),
            ],
            names=["id", "text", "source", "url", "n_bytes", "n_tokens", "quality", "crawled"],
        )
        if next_id == 0:
            batch.validate(full=True)  # UTF-8 check of the cutting logic
        batches.append(batch)
        total += batch.nbytes
        next_id += n
    return pa.Table.from_batches(batches)


# -- timing -----------------------------------------------------------------------------------


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; False where that is not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
    except OSError:
        return False
    return True


def prefault(gib: float) -> float:
    """Touch ``gib`` GiB of anonymous memory once, then free it; returns seconds taken.

    On a VM whose RAM the hypervisor backs lazily, the first touch of guest memory is far
    slower than any later one (~2.4 s/GiB vs ~0.45 s/GiB measured here), which would be charged
    to whichever step first needs that much memory."""
    t = time.perf_counter()
    held = []  # all at once, so that distinct physical pages get touched
    for _ in range(int(gib)):
        m = mmap.mmap(-1, 1 << 30)
        np.frombuffer(m, dtype=np.uint8)[::4096] = 1
        held.append(m)
    for m in held:
        m.close()
    return time.perf_counter() - t


def mem_available_gib() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    return 0.0


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    os.sync()  # nothing dirty from an earlier step is flushed inside this one
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


@dataclass
class Impl:
    """One implementation under test: write the table, scan it all back, clean up."""

    name: str
    is_ours: bool
    write: Callable[[], int]  # returns stored bytes
    scan: Callable[[], pa.Table | int] | None  # None: only the write is measured
    cleanup: Callable[[], None]


@dataclass
class Group:
    """One backend x format: our implementation and its floors, measured interleaved."""

    backend: str
    fmt: str
    impls: list[Impl]
    floors: dict[str, list[str]]  # operation -> the floors its row(s) compare with
    times: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)


def run_group(group: Group, logical: int, rows: int, repeats: int, cold: bool) -> None:
    ops = ["write", "scan (warm)"] + (["scan (cold)"] if cold else [])
    for r in range(repeats):
        k = r % len(group.impls)
        order = group.impls[k:] + group.impls[:k]
        for impl in order:
            try:
                for op in ops:
                    if op != "write" and impl.scan is None:
                        continue
                    if op == "write":
                        sec, stored = timed(impl.write)
                        group.stored[impl.name] = stored
                    else:
                        if op == "scan (cold)":
                            drop_caches()
                        assert impl.scan is not None
                        sec, out = timed(impl.scan)
                        got = out.num_rows if isinstance(out, pa.Table) else None
                        if got is not None and got != rows:
                            raise RuntimeError(f"{impl.name} scanned {got} rows, wrote {rows}")
                        del out
                    group.times.setdefault((impl.name, op), []).append(sec)
                    log(
                        f"{group.backend:5} {group.fmt:7} {op:11} {impl.name:32} rep {r + 1}: "
                        f"{sec:6.2f} s  {logical / sec / GB:5.2f} GB/s logical  "
                        f"{group.stored[impl.name] / sec / GB:5.2f} GB/s stored"
                    )
            finally:
                impl.cleanup()


# -- implementations ---------------------------------------------------------------------------


def split_ranges(shard_rows: list[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    for n in shard_rows:
        out.append((start, n))
        start += n
    return out


def ours(
    uri: str, fmt: str, table: pa.Table, config: StorageConfig | None, state: dict[str, Any]
) -> tuple[Callable[[], int], Callable[[], pa.Table]]:
    """DatasetWriter (all defaults but the format) and a full scan with verify_reads=True."""

    def write() -> int:
        with DatasetWriter(uri, format=fmt, config=config) as w:  # type: ignore[arg-type]
            w.write(table)
        assert w.manifest is not None
        state["manifest"] = w.manifest
        return sum(s.bytes for s in w.manifest.shards)

    def scan() -> pa.Table:
        ds = open_dataset(uri, config=config)
        assert isinstance(ds, TableDataset)
        return ds.to_table()

    return write, scan


def local_floor(
    root: Path,
    fmt: str,
    table: pa.Table,
    ranges: list[tuple[int, int]],
    fsync: bool,
    our_settings: bool = False,
) -> tuple[Callable[[], int], Callable[[], pa.Table]]:
    """Plain pyarrow to files; ``our_settings``: Parquet written the way DatasetWriter writes
    it (page checksums, row groups of ~DEFAULT_ROW_GROUP_BYTES in memory) to tell the cost of
    those format choices from the cost of our code."""
    paths = [root / f"part-{i:05d}.{fmt}" for i in range(len(ranges))]

    def write() -> int:
        root.mkdir(parents=True, exist_ok=True)
        for path, (start, n) in zip(paths, ranges, strict=True):
            piece = table.slice(start, n)
            if fmt == "parquet" and our_settings:
                step = max(1, DEFAULT_ROW_GROUP_BYTES * n // max(1, piece.nbytes))
                with pq.ParquetWriter(
                    path, table.schema, compression="zstd", write_page_checksum=True
                ) as w:
                    for at in range(0, n, step):
                        group = piece.slice(at, step)
                        w.write_table(group, row_group_size=group.num_rows)
            elif fmt == "parquet":
                pq.write_table(piece, path, compression="zstd")
            else:
                with pa.OSFile(str(path), "wb") as fh, pa.ipc.new_file(fh, table.schema) as w:
                    w.write_table(piece)
            if fsync:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return sum(p.stat().st_size for p in paths)

    def scan() -> pa.Table:
        return plain_read(fmt, paths)

    return write, scan


def plain_read(fmt: str, paths: list[Path]) -> pa.Table:
    """The files read back with plain pyarrow: ``pq.read_table`` or IPC file read."""
    if fmt == "parquet":
        return pa.concat_tables([pq.read_table(p) for p in paths])
    tables = []
    for p in paths:
        with pa.OSFile(str(p), "rb") as fh:
            tables.append(pa.ipc.open_file(fh.read_buffer()).read_all())
    return pa.concat_tables(tables)


def boto3_client(config: StorageConfig) -> Any:
    """A plain boto3 client (boto3's defaults, only the endpoint and keys set)."""
    return boto3.client(
        "s3",
        endpoint_url=config.endpoint_url,
        aws_access_key_id=config.access_key_id,
        aws_secret_access_key=config.secret_access_key,
        region_name=config.region or "us-east-1",
        config=Config(s3={"addressing_style": "path"}, read_timeout=120),
    )


def boto3_floor(
    client: Any, prefix: str, fmt: str, shards: list[pa.Buffer]
) -> tuple[Callable[[], int], Callable[[], int]]:
    keys = [f"{prefix}/part-{i:05d}.{fmt}" for i in range(len(shards))]

    def write() -> int:
        for key, buf in zip(keys, shards, strict=True):
            client.put_object(
                Bucket=BUCKET, Key=key, Body=buf.to_pybytes(), ContentType=CONTENT_TYPE[fmt]
            )
        return sum(b.size for b in shards)

    def scan() -> int:
        got = 0
        for key in keys:
            got += len(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        return got

    return write, scan


def s3fs_floor(
    fs: pafs.S3FileSystem, prefix: str, fmt: str, table: pa.Table, ranges: list[tuple[int, int]]
) -> tuple[Callable[[], int], Callable[[], pa.Table]]:
    paths = [f"{BUCKET}/{prefix}/part-{i:05d}.{fmt}" for i in range(len(ranges))]

    def write() -> int:
        for path, (start, n) in zip(paths, ranges, strict=True):
            piece = table.slice(start, n)
            if fmt == "parquet":
                pq.write_table(piece, path, filesystem=fs, compression="zstd")
            else:
                with fs.open_output_stream(path) as fh, pa.ipc.new_file(fh, table.schema) as w:
                    w.write_table(piece)
        return sum(info.size for info in fs.get_file_info(paths))

    def scan() -> pa.Table:
        if fmt == "parquet":
            return pa.concat_tables([pq.read_table(p, filesystem=fs) for p in paths])
        tables = []
        for p in paths:
            with fs.open_input_file(p) as fh:
                tables.append(pa.ipc.open_file(fh.read_buffer()).read_all())
        return pa.concat_tables(tables)

    return write, scan


def s3_filesystem(config: StorageConfig, content_type: str) -> pafs.S3FileSystem:
    """pyarrow's S3FileSystem with pyarrow's defaults, reaching the same server (endpoint,
    keys) as ``datastore.s3.arrow_filesystem``, sending ``content_type`` with every object."""
    scheme, _, host = (config.endpoint_url or "").partition("://")
    return pafs.S3FileSystem(
        access_key=config.access_key_id,
        secret_key=config.secret_access_key,
        region=config.region or "us-east-1",
        endpoint_override=host,
        scheme=scheme,
        default_metadata={"Content-Type": content_type},
    )


def delete_prefix(client: Any, prefix: str) -> None:
    token: str | None = None
    while True:
        kw: dict[str, Any] = {"Bucket": BUCKET, "Prefix": prefix + "/"}
        if token:
            kw["ContinuationToken"] = token
        page = client.list_objects_v2(**kw)
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
        if not page.get("IsTruncated"):
            return
        token = page["NextContinuationToken"]


# -- report -----------------------------------------------------------------------------------


def machine() -> list[str]:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(
                cmd, shell=True, capture_output=True, text=True, timeout=20
            ).stdout.strip()
        except Exception:
            return "?"

    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = int(sh("grep MemTotal /proc/meminfo | awk '{print $2}'") or 0) / 1024**2
    weed = sh(f"{shlex.quote(weed_binary())} version 2>&1 | head -1")
    git = f"git -C {shlex.quote(str(REPO))}"
    here = shlex.quote(str(REPO))
    dev = sh(f"df --output=source {here} | tail -1")
    name = os.path.basename(dev)
    fs = " ".join(sh(f"df -h --output=fstype,size,avail {here} | tail -1").split())
    disk = (
        f"{dev}, {fs} (type, size, free), "
        f"/sys/block/{name}/queue/rotational="
        f"{sh(f'cat /sys/block/{name}/queue/rotational 2>/dev/null') or '?'} "
        "(a virtual disk: the host's storage behind it is unknown)"
    )
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; VM: "
        f"{sh('systemd-detect-virt --vm 2>/dev/null') or '?'}, container: "
        f"{sh('systemd-detect-virt --container 2>/dev/null') or '?'}",
        f"- RAM: {mem:.1f} GiB; vm.dirty_background_ratio="
        f"{sh('cat /proc/sys/vm/dirty_background_ratio')}, vm.dirty_ratio="
        f"{sh('cat /proc/sys/vm/dirty_ratio')}",
        f"- Disk (workdir): {disk}",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()}, pyarrow {pa.__version__}, numpy {np.__version__}, "
        f"boto3 {boto3.__version__}, botocore {botocore.__version__}, "
        f"xxhash {xxhash.VERSION}, shardyard {datastore.__version__}",
        f"- SeaweedFS: {weed} (single `weed server` on loopback, same machine)",
        f"- git: {sh(git + ' rev-parse --short HEAD')}"
        + (
            " + uncommitted changes in datastore/"
            if sh(git + " status --porcelain datastore")
            else ""
        ),
    ]


def report(
    args: argparse.Namespace,
    groups: list[Group],
    table: pa.Table,
    cold: bool,
    started: str,
    elapsed: float,
) -> str:
    logical = table.nbytes
    lines = [
        "# Datastore storage benchmark: write and full scan, ours vs. floor",
        "",
        f"Produced by: `{' '.join(shlex.quote(a) for a in ['.venv/bin/python', *sys.argv])}`",
        f"(started {started}, took {elapsed / 60:.1f} min)",
        "",
        "## Machine",
        "",
        *machine(),
        "",
        "## Data",
        "",
        f"- {table.num_rows:,} rows, {logical / GIB:.2f} GiB logical (Arrow `nbytes`), "
        f"{len(table.schema)} columns: " + ", ".join(f"`{f.name}` {f.type}" for f in table.schema),
        "- `text` is real text (Debian docs, changelogs, man pages under /usr/share/doc and "
        "/usr/share/man, .gz unpacked): each row a slice of one file at a random offset, "
        "log-normal length (median ~1.5 KB); the same in-memory table feeds every row below.",
    ]
    for g in groups:
        ours_name = next(i.name for i in g.impls if i.is_ours)
        n = len(g.stored)
        lines.append(
            f"- {g.backend} {g.fmt}: ours stored {g.stored[ours_name] / GIB:.3f} GiB"
            + "".join(
                f"; {name} {g.stored[name] / GIB:.3f} GiB"
                for name in g.stored
                if name != ours_name and n > 1
            )
        )
    lines += [
        "",
        "## Method",
        "",
        "- Ours: `DatasetWriter(uri, format=...)` with every other setting at its default "
        f"({DEFAULT_SHARD_SIZE >> 20} MiB shards, ~{DEFAULT_ROW_GROUP_BYTES >> 20} MiB row "
        "groups, Parquet zstd with page checksums and statistics, xxh3-128 per shard, fsync on "
        "local, atomic publish, manifest committed last; S3 client defaults: 64 MiB multipart "
        "threshold, 32 MiB parts, 8 threads), the table handed over as its ~8k-row record "
        "batches; then `open_dataset(uri).to_table()` with `verify_reads=True` (each shard's "
        "size and xxh3-128 checked before it is decoded; Parquet page CRCs, which would check "
        "the same bytes again, are checked only when verify_reads is off).",
        "- Local floors: `pq.write_table(piece, path, compression='zstd')` / `pq.read_table(path)`"
        " or Arrow IPC `ipc.new_file(OSFile)` / read the file into memory + `ipc.open_file(buf)."
        "read_all()`, the table split into the same row ranges as our shards, same filesystem. "
        "The write floor is timed plain (no fsync: the acceptance floor) and with an fsync per "
        "file (ours fsyncs). For Parquet, one more write floor, *pq.ParquetWriter, our "
        "settings, +fsync* (page checksums, ~16 MiB row groups), separates the cost of those "
        "format choices from the cost of our code; it is not the acceptance floor. Scans are "
        "compared with the plain floor (the acceptance floor) and, to tell the reader's cost "
        "from the files', with the +fsync floor's files and with *plain read of files "
        "DatasetWriter wrote* (files from a separate DatasetWriter write whose time is not "
        "reported, read by `pq.read_table` / IPC read, no checksum): on this VM, files fsynced as "
        "they were written read back cold slower and more erratically than files flushed later "
        "by a global sync, whoever reads them.",
        "- S3 floors: (a) raw boto3 `put_object` / `get_object(...)['Body'].read()`, one request "
        "per shard, sequential, of exactly our shard bytes: transfer only, no encode/decode; "
        "(b) `pyarrow.fs.S3FileSystem` + `pq.write_table` / `pq.read_table` (or IPC via "
        "`open_output_stream` / `open_input_file(...).read_buffer()`) of the same split: "
        "encode + transfer like ours. Both send the Content-Type ours sends "
        "(`application/vnd.apache.parquet` / `application/vnd.apache.arrow.file`): SeaweedFS "
        "gzips objects (and each multipart part) it sniffs as text unless told their type, "
        "which made 256 MiB Arrow IPC PUTs ~1.3x and GETs ~2.3x slower in a side test; "
        "without it the server would do different work for different clients.",
        f"- GB = 10^9 bytes. **logical** = Arrow `table.nbytes` ({logical / GB:.3f} GB, same for "
        "everyone); **stored** = bytes that implementation wrote (for scans: read). "
        "ours/floor = floor time / our time (identical on either byte count).",
        f"- Each measurement repeated {args.repeats}x, ours and floors interleaved, order "
        "rotated each repeat; reported: **best** (shortest) time of each (all times are listed "
        "at the end). Before every timed step: `gc.collect()` and `os.sync()` (untimed), so no "
        "earlier dirty data is flushed inside it. Before the run, "
        + (
            f"{args.prefault_gib_done:.0f} GiB of RAM were touched once (untimed): "
            if args.prefault_gib_done
            else "no RAM was pre-touched: "
        )
        + "on this VM the first touch of guest memory costs ~2.4 s/GiB (the hypervisor backs "
        "it lazily, and free-page reporting hands freed memory back), later touches ~0.45 s/GiB;"
        " that effect, and the virtual disk, make single timings swing by up to several times "
        "(see the raw times), hence best-of.",
        "- warm scan: right after that implementation's write. "
        + (
            "cold scan: `sync; echo 3 > /proc/sys/vm/drop_caches` right before (clears the "
            "guest page cache, incl. SeaweedFS's volume files; the hypervisor's cache of the "
            "virtual disk, if any, is out of reach)."
            if cold
            else "cold scan: not measured (drop_caches not writable)."
        ),
        "",
        "## Results",
        "",
        "| backend | format | operation | ours GB/s logical (stored) | floor | "
        "floor GB/s logical (stored) | ours/floor |",
        "|---|---|---|---|---|---|---|",
    ]
    below: list[str] = []
    for g in groups:
        ours_name = next(i.name for i in g.impls if i.is_ours)
        ops = ["write", "scan (warm)"] + (["scan (cold)"] if cold else [])
        for op in ops:
            t_ours = min(g.times[(ours_name, op)])
            for floor in g.floors[op]:
                t_floor = min(g.times[(floor, op)])
                ratio = t_floor / t_ours
                # two decimals, or three where two would round a miss up to 0.90
                shown = f"{ratio:.3f}" if 0.895 <= ratio < 0.9 else f"{ratio:.2f}"
                mark = "" if ratio >= 0.9 else " **<0.9**"
                if ratio < 0.9:
                    below.append(f"{g.backend} {g.fmt} {op} vs {floor}: {shown}x")
                lines.append(
                    f"| {g.backend} | {g.fmt} | {op} | "
                    f"{logical / t_ours / GB:.2f} ({g.stored[ours_name] / t_ours / GB:.2f}) | "
                    f"{floor} | "
                    f"{logical / t_floor / GB:.2f} ({g.stored[floor] / t_floor / GB:.2f}) | "
                    f"{shown}{mark} |"
                )
    lines += ["", "Rows below 0.9x: " + ("; ".join(below) if below else "none."), ""]
    lines += ["## Raw times (seconds, every repeat)", ""]
    for g in groups:
        for (name, op), secs in g.times.items():
            lines.append(
                f"- {g.backend} {g.fmt} {op} {name}: " + ", ".join(f"{s:.2f}" for s in secs)
            )
    return "\n".join(lines) + "\n"


# -- main -------------------------------------------------------------------------------------


@contextlib.contextmanager
def workdir_for(arg: str | None) -> Iterator[Path]:
    if arg:
        base = Path(arg)
        base.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    else:
        path = Path(tempfile.mkdtemp(prefix="shardyard-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def local_group(work: Path, fmt: str, table: pa.Table, ranges: list[tuple[int, int]]) -> Group:
    root = work / "local"
    ow, osc = ours(str(root / "ours"), fmt, table, None, {})
    fw, fsc = local_floor(root / "floor", fmt, table, ranges, fsync=False)
    fw2, fsc2 = local_floor(root / "floor-fsync", fmt, table, ranges, fsync=True)
    plain = "pq.write/read_table" if fmt == "parquet" else "Arrow IPC write/read"

    def remover(name: str) -> Callable[[], None]:
        return lambda: shutil.rmtree(root / name, ignore_errors=True)

    # Our writer's files read back by plain pyarrow: tells the reader's cost from the files'.
    state: dict[str, Any] = {}
    mine = "plain read of files DatasetWriter wrote"
    mw, _ = ours(str(root / "ours-plain-read"), fmt, table, None, state)

    def plain_read_of_ours() -> pa.Table:
        paths = [root / "ours-plain-read" / s.path for s in state["manifest"].shards]
        return plain_read(fmt, paths)

    impls = [
        Impl("ours", True, ow, osc, remover("ours")),
        Impl(plain, False, fw, fsc, remover("floor")),
        Impl(plain + " +fsync", False, fw2, fsc2, remover("floor-fsync")),
        Impl(mine, False, mw, plain_read_of_ours, remover("ours-plain-read")),
    ]
    scans = [plain, plain + " +fsync", mine]
    floors = {"write": [plain, plain + " +fsync"], "scan (warm)": scans, "scan (cold)": scans}
    if fmt == "parquet":
        same = "pq.ParquetWriter, our settings, +fsync"
        fw3, _ = local_floor(root / "floor-same", fmt, table, ranges, fsync=True, our_settings=True)
        impls.append(Impl(same, False, fw3, None, remover("floor-same")))
        floors["write"].append(same)
    return Group("local", fmt, impls, floors)


def s3_group(
    server: SeaweedFS,
    fmt: str,
    table: pa.Table,
    ranges: list[tuple[int, int]],
    shard_bytes: list[pa.Buffer],
) -> Group:
    config = server.config.replace(read_timeout=120.0, connect_timeout=10.0)
    client = boto3_client(config)
    fs = s3_filesystem(config, CONTENT_TYPE[fmt])
    run = uuid.uuid4().hex[:8]
    p_ours, p_boto, p_fs = (f"{run}-{fmt}-{x}" for x in ("ours", "boto3", "s3fs"))
    ow, osc = ours(f"s3://{BUCKET}/{p_ours}", fmt, table, config, {})
    bw, bsc = boto3_floor(client, p_boto, fmt, shard_bytes)
    sw, ssc = s3fs_floor(fs, p_fs, fmt, table, ranges)
    boto_name = "boto3 put/get_object (same bytes)"
    fs_name = "pyarrow S3FileSystem " + ("pq" if fmt == "parquet" else "IPC")

    def remover(prefix: str) -> Callable[[], None]:
        return lambda: delete_prefix(client, prefix)

    impls = [
        Impl("ours", True, ow, osc, remover(p_ours)),
        Impl(boto_name, False, bw, bsc, remover(p_boto)),
        Impl(fs_name, False, sw, ssc, remover(p_fs)),
    ]
    both = [boto_name, fs_name]
    return Group("s3", fmt, impls, {"write": both, "scan (warm)": both, "scan (cold)": both})


def our_layout(work: Path, fmt: str, table: pa.Table) -> tuple[list[int], list[pa.Buffer]]:
    """Rows and bytes of each shard DatasetWriter makes of ``table`` (one untimed local write):
    the floors split the table the same way, and the raw-S3 floor sends these very bytes."""
    root = work / f"layout-{fmt}"
    state: dict[str, Any] = {}
    write, _ = ours(str(root), fmt, table, None, state)
    write()
    rows, data = [], []
    for shard in state["manifest"].shards:
        rows.append(shard.rows)
        with pa.OSFile(str(root / shard.path), "rb") as fh:
            data.append(fh.read_buffer())
    shutil.rmtree(root)
    return rows, data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=1.0, help="logical table size (GiB)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/datastore.md"))
    ap.add_argument(
        "--workdir",
        default=str(REPO / "benchmarks/.data"),
        help="scratch space (a fresh subfolder is made and removed); '' = system tempdir",
    )
    ap.add_argument("--repeats", type=int, default=2, help="runs of each step; best is kept")
    ap.add_argument("--formats", default="parquet,arrow")
    ap.add_argument("--backends", default="local,s3")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cache scans")
    ap.add_argument(
        "--prefault-gib",
        type=float,
        default=-1,
        help="GiB of RAM to touch once before measuring (-1: 60%% of MemAvailable; 0: off)",
    )
    args = ap.parse_args(argv)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    t_start = time.perf_counter()
    formats = args.formats.split(",")
    backends = args.backends.split(",")

    pf = args.prefault_gib if args.prefault_gib >= 0 else 0.6 * mem_available_gib()
    args.prefault_gib_done = int(pf) if pf >= 1 else 0
    if pf >= 1:
        log(f"touching {int(pf)} GiB of RAM once (untimed) ...")
        log(f"  took {prefault(pf):.1f} s")
    log(f"generating ~{args.size_gib} GiB of table data")
    table = make_table(int(args.size_gib * GIB))
    logical = table.nbytes
    log(f"table: {table.num_rows:,} rows, {logical / GIB:.3f} GiB logical")
    cold = not args.no_cold and drop_caches()
    if not cold:
        log("cold scans: off" + ("" if args.no_cold else " (cannot write drop_caches)"))

    groups: list[Group] = []
    with workdir_for(args.workdir) as work:
        log(f"workdir {work}")
        server: SeaweedFS | None = None
        try:
            if "s3" in backends:
                server = SeaweedFS(work / "seaweedfs").start()
                server.create_bucket(BUCKET)
                log(f"SeaweedFS up at {server.endpoint_url}")
            for fmt in formats:
                shard_rows, shard_bytes = our_layout(work, fmt, table)
                log(
                    f"{fmt}: {len(shard_rows)} shards, "
                    f"{sum(b.size for b in shard_bytes) / GIB:.3f} GiB stored"
                )
                ranges = split_ranges(shard_rows)
                todo = []
                if "local" in backends:
                    todo.append(local_group(work, fmt, table, ranges))
                if server is not None:
                    todo.append(s3_group(server, fmt, table, ranges, shard_bytes))
                for group in todo:
                    run_group(group, logical, table.num_rows, args.repeats, cold)
                    groups.append(group)
                del shard_bytes
        finally:
            if server is not None:
                server.stop()
                log("SeaweedFS stopped")

    text = report(args, groups, table, cold, started, time.perf_counter() - t_start)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
