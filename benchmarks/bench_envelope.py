"""What client-side envelope encryption costs: a registry blob store in an ``aes-gcm`` location
(registry.envelope: AES-256-GCM in 4 MiB chunks, a data key per blob) against the same store
unsealed and against the floor (copying the file), on local disk and on the S3 server.

Cases, each on one file of ``--mib`` MiB of random bytes, median of ``--repeats`` (dirty pages
written back before each case, so one case's writeback is not billed to the next):

* floor: ``shutil.copyfile`` to the store's filesystem (local) or one boto3 ``upload_file`` /
  ``download_file`` (S3);
* store plain: ``BlobStore.put_file`` / ``get_to_file`` (hash, atomic publish; verified read);
* store sealed: the same with the location's sealer (seal on the way in, authenticate and open
  on the way out).

Run: ``.venv/bin/python benchmarks/bench_envelope.py [--mib 1024] [--repeats 3] [--s3]``
(``--s3`` starts a SeaweedFS server as the test suite does).
"""

from __future__ import annotations

import argparse
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO / "benchmarks" / ".data"
OUT = REPO / "benchmarks" / "results" / "envelope.md"


def settle() -> None:
    os.sync()
    time.sleep(0.5)


def median_time(repeats: int, setup: Callable[[], None], run: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeats):
        setup()
        settle()
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--s3", action="store_true", help="also on a SeaweedFS S3 server")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    from registry.blobs import sha256_file
    from registry.envelope import LocalKeyFile, Sealer, create_key

    DATA.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-envelope-", dir=DATA))
    rows: list[tuple[str, str, float, float]] = []
    server = None
    try:
        src = work / "blob.bin"
        with open(src, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        sha, size = sha256_file(src)
        create_key(work / "keys.json", "k1")
        sealer = Sealer(LocalKeyFile(work / "keys.json"), "k1")
        targets: list[tuple[str, str, Any]] = [("local", str(work / "store"), None)]
        if args.s3:
            from datastore.testing import SeaweedFS

            server = SeaweedFS(work / "seaweed")
            server.start()
            server.create_bucket("bench")
            targets.append(("S3 (SeaweedFS)", "s3://bench/store", server.config))
        for where, uri, config in targets:
            rows += measure(args, work, src, sha, size, sealer, where, uri, config)
            print(rows[-3:], file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    write(args, rows)
    return 0


def measure(
    args: argparse.Namespace,
    work: Path,
    src: Path,
    sha: str,
    size: int,
    sealer: Any,
    where: str,
    uri: str,
    config: Any,
) -> list[tuple[str, str, float, float]]:
    """The floor, the plain store and the sealed store at ``uri``."""
    from registry.blobs import BlobStore

    rows: list[tuple[str, str, float, float]] = []
    plain = BlobStore(f"{uri}-plain", config)
    sealed = BlobStore(f"{uri}-sealed", config, sealer)

    def drop(store: BlobStore) -> Callable[[], None]:
        return lambda: store.delete(sha) if store.has(sha, size) else None

    out = work / "out.bin"
    if config is None:
        floor_dest = work / "floor.bin"
        floor_put = median_time(
            args.repeats,
            lambda: floor_dest.unlink(missing_ok=True),
            lambda: _copy_synced(src, floor_dest),
        )
        floor_get = median_time(
            args.repeats,
            lambda: out.unlink(missing_ok=True),
            lambda: _copy_synced(floor_dest, out),
        )
    else:
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=config.endpoint_url,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            region_name="us-east-1",
        )
        floor_put = median_time(
            args.repeats, lambda: None, lambda: s3.upload_file(str(src), "bench", "floor")
        )
        floor_get = median_time(
            args.repeats,
            lambda: out.unlink(missing_ok=True),
            lambda: s3.download_file("bench", "floor", str(out)),
        )
    rows.append((where, "floor (copy)", floor_put, floor_get))
    for label, store in (("store plain", plain), ("store sealed (aes-gcm)", sealed)):
        put = median_time(args.repeats, drop(store), lambda s=store: s.put_file(src, sha))
        get = median_time(
            args.repeats,
            lambda: out.unlink(missing_ok=True),
            lambda s=store: s.get_to_file(sha, size, out),
        )
        rows.append((where, label, put, get))
    return rows


def _copy_synced(src: Path, dest: Path) -> None:
    shutil.copyfile(src, dest)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(args: argparse.Namespace, rows: list[tuple[str, str, float, float]]) -> None:
    gib = args.mib / 1024
    lines = [
        "# Client-side envelope encryption: what sealing blobs costs",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} "
        f"cores), Python {platform.python_version()}. Command: `.venv/bin/python "
        f"benchmarks/bench_envelope.py --mib {args.mib} --repeats {args.repeats}"
        f"{' --s3' if args.s3 else ''}`. One file of {args.mib} MiB of random bytes; median of "
        f"{args.repeats}; dirty pages written back before each case.",
        "",
        "| where | case | put GB/s | get GB/s | put / floor | get / floor | put sealed / plain "
        "| get sealed / plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_where: dict[str, dict[str, tuple[float, float]]] = {}
    for where, label, put, get in rows:
        by_where.setdefault(where, {})[label] = (put, get)
    for where, cases in by_where.items():
        fp, fg = cases["floor (copy)"]
        pp, pg = cases["store plain"]
        for label, (put, get) in cases.items():
            sealed = label.startswith("store sealed")
            lines.append(
                f"| {where} | {label} | {gib * 1.073741824 / put:.2f} | "
                f"{gib * 1.073741824 / get:.2f} | {fp / put:.2f}x | {fg / get:.2f}x | "
                + (f"{pp / put:.2f}x | {pg / get:.2f}x |" if sealed else "- | - |")
            )
    lines.append("")
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
