"""Timing rules shared by ``bench_registry.py`` (ours) and ``registry_mlflow.py`` (MLflow's
side, run in MLflow's own venv): standard library only, so both sides measure alike."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

__all__ = ["percentile", "pin", "timed"]


def pin(cpu: int) -> int:
    """Pin this process (and its future children) to ``cpu``, or the last allowed CPU."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = cpu if cpu in allowed else allowed[-1]
    os.sched_setaffinity(0, {chosen})
    return chosen


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def timed(
    op: str,
    call: Callable[[int], Any],
    ops: int,
    *,
    warmup: int,
    budget: float,
    min_samples: int,
    side: str,
) -> dict[str, Any]:
    """Time ``call(i)`` up to ``ops`` times after up to ``warmup`` untimed calls (warm-up stops
    after one second); stop early once ``budget`` seconds are spent and ``min_samples`` done."""
    start = time.perf_counter()
    for i in range(warmup):
        call(-1 - i)
        if time.perf_counter() - start > 1.0:
            break
    samples: list[float] = []
    for i in range(ops):
        t0 = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - t0)
        if len(samples) >= min_samples and sum(samples) >= budget:
            break
    samples.sort()
    return {
        "side": side,
        "op": op,
        "samples": len(samples),
        "p50_ms": percentile(samples, 50) * 1e3,
        "p99_ms": percentile(samples, 99) * 1e3,
        "mean_ms": sum(samples) / len(samples) * 1e3,
    }
