"""Checkpoint I/O: ``registry.checkpoints`` against ``torch.save``/``torch.load``, safetensors
and the raw storage floor, locally and to S3, and the time an async save blocks the caller.

A state dict of ``--size`` MiB (float32 tensors of 1-64 MiB, as a model's layers) is saved and
loaded ``--repeats`` times per case, interleaved; medians are reported.

Local (same disk): ``torch.save`` and ``safetensors.torch.save_file`` to one file, each followed
by ``fsync`` (a checkpoint is only useful once durable); the floor writes the tensors' bytes
with ``os.write`` and fsyncs. Loads read them back from a warm page cache (this machine cannot
drop it): ``torch.load``; safetensors' ``load_file`` maps the file lazily, so it is reported
as is and with every tensor copied into private memory (what ours returns); the floor reads
the file into one buffer. Ours: ``checkpoints.save`` into a fresh local registry
(safetensors shards of 512 MiB written once while a second thread computes sha256 and
per-tensor xxh3, published by rename) and ``checkpoints.load`` (header and every tensor's
checksum verified). ``resave`` saves the same tensors again (every shard deduplicated).

S3 (SeaweedFS on loopback, ``--s3``): ours into a registry whose blob store is ``s3://``
(shards hashed in memory, then sent by the multipart writer) against boto3's
``upload_fileobj``/``download_fileobj`` of the same bytes with the same part size and
concurrency (the floor; no checksum of the whole object on download).

Run: ``.venv/bin/python benchmarks/bench_checkpoints.py [--size 2048] [--s3]``
"""

from __future__ import annotations

import argparse
import io
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
RESULTS = REPO / "benchmarks" / "results" / "checkpoints.md"
DATA = REPO / "benchmarks" / ".data"


def state_dict(mib: int) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    out = {}
    left = mib << 20
    i = 0
    while left > 0:
        nbytes = min(left, (1 + (i * 7) % 64) << 20)
        out[f"layer.{i}.weight"] = torch.randn(nbytes // 4, generator=g)
        left -= nbytes
        i += 1
    return out


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def settle() -> None:
    """Write back every dirty page first, so no case pays for the one before it."""
    os.sync()
    time.sleep(0.5)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def raw_write(sd: dict[str, Any], path: Path) -> None:
    """The floor of a save: the tensors' bytes written in order, then fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for t in sd.values():
            view = t.numpy().data.cast("B")
            while view.nbytes:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_read(path: Path) -> Any:
    """The floor of a load: the file read into one fresh buffer."""
    import torch

    size = path.stat().st_size
    buf = torch.empty(size, dtype=torch.uint8)
    view = memoryview(buf.numpy()).cast("B")
    with open(path, "rb", buffering=0) as f:
        got = 0
        while got < size:
            got += f.readinto(view[got:])
    return buf


def main() -> int:
    import torch
    from safetensors.torch import load_file, save_file

    from registry import Registry
    from registry import checkpoints as ck

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048, help="state dict MiB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--s3", action="store_true", help="also save/load to SeaweedFS S3")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=DATA))
    sd = state_dict(args.size)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    times: dict[str, list[float]] = {}

    def add(case: str, seconds: float) -> None:
        times.setdefault(case, []).append(seconds)
        print(f"{case}: {nbytes / seconds / 1e9:.2f} GB/s", flush=True)

    server = None
    if args.s3:
        from boto3.s3.transfer import TransferConfig

        from datastore.s3 import make_client
        from datastore.testing import SeaweedFS

        server = SeaweedFS(work / "seaweedfs").start()
        client = make_client(server.config)
        client.create_bucket(Bucket="ckpt")
        cfg = server.config
        transfer = TransferConfig(
            multipart_threshold=cfg.multipart_threshold,
            multipart_chunksize=cfg.multipart_chunksize,
            max_concurrency=cfg.max_concurrency,
        )
        blob = b"".join(t.numpy().tobytes() for t in sd.values())
    try:
        for r in range(args.repeats):
            f = work / f"f{r}.bin"
            p = work / f"t{r}.pt"
            s = work / f"s{r}.safetensors"
            reg = Registry(str(work / f"r{r}.db"), str(work / f"blobs{r}"))

            def floor(f: Path = f) -> None:
                add("save floor", timed(lambda: raw_write(sd, f)))
                add("load floor", timed(lambda: raw_read(f)))

            def torch_case(p: Path = p) -> None:
                def torch_save() -> None:
                    torch.save(sd, p)
                    fsync_path(p)

                add("save torch.save", timed(torch_save))
                add("load torch.load", timed(lambda: torch.load(p, weights_only=True)))

            def st_case(s: Path = s) -> None:
                def st_save() -> None:
                    save_file(sd, str(s))
                    fsync_path(s)

                add("save safetensors", timed(st_save))
                add("load safetensors (lazy mmap)", timed(lambda: load_file(str(s))))
                add(
                    "load safetensors (copied)",
                    timed(lambda: {k: v.clone() for k, v in load_file(str(s)).items()}),
                )

            def ours_case(reg: Registry = reg, r: int = r) -> None:
                add("save ours", timed(lambda: ck.save(reg, sd, "bench/run", step=r)))
                add("load ours", timed(lambda: ck.load(reg, "bench/run:1")))
                settle()
                add("resave ours (dedup)", timed(lambda: ck.save(reg, sd, "bench/run")))

            cases = [floor, torch_case, st_case, ours_case]
            for case in cases[r % len(cases) :] + cases[: r % len(cases)]:  # rotated per repeat
                settle()
                case()
            settle()
            # async, into a fresh registry (the same work as the synchronous save, no dedup):
            # what the caller waits for, then the whole save
            other = Registry(str(work / f"a{r}.db"), str(work / f"ablobs{r}"))
            start = time.perf_counter()
            handle = ck.save_async(other, sd, "bench/run", step=r)
            blocked = time.perf_counter() - start
            handle.wait()
            total = time.perf_counter() - start
            times.setdefault("async blocked", []).append(blocked)
            times.setdefault("async total", []).append(total)
            # a training loop's next save: the snapshot reuses the finished save's buffer
            # (other tensor values, so nothing is deduplicated)
            for t in sd.values():
                t.add_(1.0)
            start = time.perf_counter()
            handle = ck.save_async(other, sd, "bench/run", step=r + 1)
            times.setdefault("async blocked (next save)", []).append(time.perf_counter() - start)
            handle.wait()
            for x in (f, p, s):
                x.unlink()
            reg.close()
            other.close()
            for d in (f"blobs{r}", f"ablobs{r}"):
                shutil.rmtree(work / d, ignore_errors=True)
            if server is not None:
                settle()
                key = f"floor/{r}.bin"
                add(
                    "s3 save boto3",
                    timed(
                        lambda key=key: client.upload_fileobj(
                            io.BytesIO(blob), "ckpt", key, Config=transfer
                        )
                    ),
                )
                add(
                    "s3 load boto3",
                    timed(
                        lambda key=key: client.download_fileobj(
                            "ckpt", key, io.BytesIO(), Config=transfer
                        )
                    ),
                )
                client.delete_object(Bucket="ckpt", Key=key)
                sreg = Registry(str(work / f"s{r}.db"), f"s3://ckpt/reg{r}", config=server.config)
                add("s3 save ours", timed(lambda sreg=sreg: ck.save(sreg, sd, "bench/run")))
                add("s3 load ours", timed(lambda sreg=sreg: ck.load(sreg, "bench/run:1")))
                sreg.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    gbs = {k: nbytes / v / 1e9 for k, v in med.items()}
    lines = [
        "# Checkpoint I/O: registry.checkpoints vs torch.save / safetensors / the floor",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} cores), Python {platform.python_version()}, torch "
        f"{torch.__version__}. Command: `.venv/bin/python benchmarks/bench_checkpoints.py "
        f"--size {args.size}{' --s3' if args.s3 else ''}`. State dict: "
        f"{nbytes / 2**20:,.0f} MiB of float32 tensors ({len(sd)} tensors); median of "
        f"{args.repeats}, interleaved; saves fsync'd, loads from a warm page cache.",
        "",
        "| case | s | GB/s | ours/floor | ours/torch | ours/safetensors |",
        "|---|---|---|---|---|---|",
    ]

    def row(key: str, peers: tuple[str | None, str | None, str | None]) -> str:
        out = f"| {key} | {med[key]:.2f} | {gbs[key]:.2f} |"
        for peer in peers:
            out += f" {gbs[key] / gbs[peer]:.2f}x |" if peer else " |"
        return out

    for key in ("save floor", "save torch.save", "save safetensors"):
        lines.append(row(key, (None, None, None)))
    lines.append(row("save ours", ("save floor", "save torch.save", "save safetensors")))
    lines.append(row("resave ours (dedup)", ("save floor", "save torch.save", "save safetensors")))
    for key in (
        "load floor",
        "load torch.load",
        "load safetensors (lazy mmap)",
        "load safetensors (copied)",
    ):
        lines.append(row(key, (None, None, None)))
    lines.append(row("load ours", ("load floor", "load torch.load", "load safetensors (copied)")))
    if server is not None:
        lines += [
            "",
            "| S3 case | s | GB/s | ours/boto3 |",
            "|---|---|---|---|",
        ]
        for op in ("save", "load"):
            lines.append(
                f"| s3 {op} boto3 | {med[f's3 {op} boto3']:.2f} | {gbs[f's3 {op} boto3']:.2f} | |"
            )
            lines.append(
                f"| s3 {op} ours | {med[f's3 {op} ours']:.2f} | "
                f"{gbs[f's3 {op} ours']:.2f} | "
                f"{gbs[f's3 {op} ours'] / gbs[f's3 {op} boto3']:.2f}x |"
            )
    ratio = med["async blocked"] / med["save ours"]
    again = med["async blocked (next save)"] / med["save ours"]
    lines += [
        "",
        f"Async save: the caller waits {med['async blocked']:.2f} s (the host snapshot into "
        f"fresh memory) of a {med['async total']:.2f} s save ({ratio:.0%} of a synchronous "
        f"save's {med['save ours']:.2f} s); the next save, whose snapshot reuses the finished "
        f"save's buffer, waits {med['async blocked (next save)']:.2f} s ({again:.0%}).",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
