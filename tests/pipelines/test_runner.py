"""The Dask client helper: the environment LocalCluster workers start with."""

from __future__ import annotations

import os

from pipelines.config import ExecutionConfig
from pipelines.runner import dask_client


def _environ(client: object, names: tuple[str, ...]) -> dict[str, str | None]:
    """The variables as the (one) worker process sees them."""
    return {n: next(iter(client.run(os.getenv, n).values())) for n in names}  # type: ignore[attr-defined]


def test_pre_spawn_variables_reach_workers_and_none_removes_a_dask_default() -> None:
    """Embedding removes Dask's MALLOC_TRIM_THRESHOLD_ (it makes torch ~35% slower here);
    the worker processes must start without it, and with a variable we add."""
    names = ("MALLOC_TRIM_THRESHOLD_", "SHARDYARD_TEST_PRE_SPAWN")
    execution = ExecutionConfig(workers=1, progress=False)
    with dask_client(execution, lambda _: None) as client:
        default = _environ(client, names)
    assert default["MALLOC_TRIM_THRESHOLD_"] == "65536", "Dask's default (test premise)"
    pre = {"MALLOC_TRIM_THRESHOLD_": None, "SHARDYARD_TEST_PRE_SPAWN": "1"}
    with dask_client(execution, lambda _: None, pre_spawn=pre) as client:
        got = _environ(client, names)
    assert got == {"MALLOC_TRIM_THRESHOLD_": None, "SHARDYARD_TEST_PRE_SPAWN": "1"}
