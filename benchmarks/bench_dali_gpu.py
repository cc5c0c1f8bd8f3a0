"""DALI GPU-direct benchmark: token rows into GPU memory with ``loaders.dali``'s
``numpy_reader_pipeline(device="gpu")`` (``fn.readers.numpy``, GPUDirect Storage where the host
has it) against a raw read of the same ``.npy`` files into GPU memory, on the same data.

Cases (GB/s of token bytes landed in GPU memory, warm page cache unless ``--drop-caches``):

* ``floor-kvikio``: each shard file read whole with kvikio's ``CuFile`` (cuFile/GDS, the raw
  GPUDirect read) into a CuPy array, when kvikio is installed;
* ``floor-cupy``: each shard file read with ``numpy.load`` into pinned host memory and copied
  with ``cupy.asarray`` (the plain host-bounce floor);
* ``ours-numpy-reader``: the shuffled epoch through ``numpy_reader_pipeline`` and
  ``DALIGenericIterator`` (rows of 2,048 tokens, batch ``--batch``), rank 0 of 1;
* ``ours-external-source``: the same epoch through ``dali_pipeline`` (the dataset's batches fed
  by ``fn.external_source``, copied to the GPU by DALI).

Needs a CUDA GPU, ``nvidia-dali-cuda120`` and ``cupy-cuda12x`` (kvikio optional). Without a GPU it
says so and writes nothing: ``benchmarks/results/loaders.md`` then keeps saying the GPU path is
not measured. Data: the token dataset of ``bench_loaders.py`` (``--tokens`` to point
elsewhere).

Run on a GPU host: ``.venv/bin/python benchmarks/bench_dali_gpu.py [--tokens URI] [--batch 32]``
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results" / "loaders-dali-gpu.md"
DEFAULT_TOKENS = REPO / "benchmarks" / ".data" / "load-100MB-tokens"


def gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    return None


def floor_cupy(paths: list[Path]) -> tuple[int, float]:
    import cupy
    import numpy as np

    total = 0
    start = time.perf_counter()
    for path in paths:
        host = np.load(path, mmap_mode="r")
        pinned = cupy.cuda.alloc_pinned_memory(host.nbytes)
        buf = np.frombuffer(pinned, host.dtype, host.size).reshape(host.shape)
        buf[...] = host
        dev = cupy.asarray(buf)
        total += dev.nbytes
    cupy.cuda.Device().synchronize()
    return total, time.perf_counter() - start


def floor_kvikio(paths: list[Path]) -> tuple[int, float]:
    import cupy
    import kvikio
    import numpy as np

    total = 0
    start = time.perf_counter()
    for path in paths:
        header = np.load(path, mmap_mode="r")
        offset = header.offset
        dev = cupy.empty(header.nbytes, dtype=cupy.uint8)
        with kvikio.CuFile(str(path), "r") as f:
            total += f.read(dev, file_offset=offset)
    cupy.cuda.Device().synchronize()
    return total, time.perf_counter() - start


def ours_numpy_reader(uri: str, cache: str, batch: int) -> tuple[int, float, float]:
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    from loaders import StreamingDataset
    from loaders.dali import numpy_reader_pipeline

    ds = StreamingDataset(uri, batch_size=batch, seed=0, cache_dir=cache)
    pipe, n = numpy_reader_pipeline(ds, device="gpu", device_id=0)
    it = DALIGenericIterator(
        [pipe], ["input_ids"], size=n, last_batch_policy=LastBatchPolicy.PARTIAL
    )
    start = time.perf_counter()
    first = 0.0
    total = 0
    for out in it:
        if not first:
            first = time.perf_counter() - start
        total += out[0]["input_ids"].shape[0] * out[0]["input_ids"].shape[1] * 2  # stored bytes
    return total, time.perf_counter() - start, first


def ours_external_source(uri: str, cache: str, batch: int) -> tuple[int, float, float]:
    from loaders import StreamingDataset
    from loaders.dali import DaliLoader

    ds = StreamingDataset(uri, batch_size=batch, seed=0, cache_dir=cache, outputs=["input_ids"])
    start = time.perf_counter()
    first = 0.0
    total = 0
    for out in DaliLoader(ds, device_id=0, num_threads=4):
        if not first:
            first = time.perf_counter() - start
        total += out["input_ids"].shape[0] * out["input_ids"].shape[1] * 2
    return total, time.perf_counter() - start, first


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default=str(DEFAULT_TOKENS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    gpu = gpu_name()
    if gpu is None:
        print("no CUDA GPU here: the DALI GPU path is not measured (nothing written)")
        return 2
    from loaders import StreamingDataset

    cache = tempfile.mkdtemp(prefix="bench-dali-gpu-")
    warm = StreamingDataset(args.tokens, batch_size=args.batch, cache_dir=cache)
    paths = sorted({warm.source.fetch(i, warm.cache)[0] for i in range(len(warm.source.sizes))})
    rows: list[tuple[str, int, float, float]] = []
    for name, fn in (("floor-cupy", floor_cupy), ("floor-kvikio", floor_kvikio)):
        try:
            fn(paths)  # warm
            nbytes, wall = fn(paths)
            rows.append((name, nbytes, wall, 0.0))
        except ImportError as err:
            print(f"{name}: skipped ({err})")
    for name, ours in (
        ("ours-numpy-reader", ours_numpy_reader),
        ("ours-external-source", ours_external_source),
    ):
        ours(args.tokens, cache, args.batch)  # warm (pipeline build, page cache)
        nbytes, wall, first = ours(args.tokens, cache, args.batch)
        rows.append((name, nbytes, wall, first))
    floor = max(nb / w for n, nb, w, _ in rows if n.startswith("floor"))
    lines = [
        "# DALI GPU path: token rows into GPU memory",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({gpu}), Python "
        f"{platform.python_version()}. Command: `.venv/bin/python benchmarks/bench_dali_gpu.py "
        f"--tokens {args.tokens} --batch {args.batch}`. Warm page cache; ours read the epoch "
        "shuffled across shards, the floors read each file whole, in order.",
        "",
        "| case | GB | s | GB/s | ours/best floor | first batch s |",
        "|---|---|---|---|---|---|",
    ]
    for name, nbytes, wall, first in rows:
        lines.append(
            f"| {name} | {nbytes / 1e9:.2f} | {wall:.2f} | {nbytes / wall / 1e9:.2f} | "
            f"{nbytes / wall / floor:.2f}x | {first:.3f} |"
        )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
