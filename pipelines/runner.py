"""Where an ingest job runs: an embedded Dask LocalCluster, or an existing cluster, and a
progress line on the terminal while its tasks finish."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from datastore.errors import Unreachable
from pipelines.config import ExecutionConfig

__all__ = ["Progress", "dask_client", "run_tasks"]

log = logging.getLogger("shardyard.ingest")


@contextmanager
def dask_client(
    execution: ExecutionConfig,
    echo: Callable[[str], None],
    worker_env: dict[str, str] | None = None,
    pre_spawn: dict[str, str | None] | None = None,
) -> Iterator[Any]:
    """A ``distributed.Client``: to ``execution.scheduler`` (or ``DASK_SCHEDULER_ADDRESS``)
    when set, else to a LocalCluster with one single-threaded worker process per core (or
    ``execution.workers``) sharing 80% of the machine's memory. ``echo`` gets the dashboard
    link. ``worker_env`` is added to the LocalCluster worker processes' environment (an
    existing cluster's workers keep theirs); ``pre_spawn`` overrides Dask's
    ``distributed.nanny.pre-spawn-environ`` (None removes a variable)."""
    from distributed import Client, LocalCluster

    # distributed sets its loggers to INFO on import; follow the application's level instead
    # (the CLI's -V flags), so a quiet run prints nothing but our own lines.
    logging.getLogger("distributed").setLevel(
        max(logging.WARNING, logging.getLogger().getEffectiveLevel())
    )
    address = execution.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        try:
            client = Client(address, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise Unreachable(
                f"cannot reach the Dask scheduler at {address} ({err}); is it running?"
            ) from None
        try:
            echo(f"dask: scheduler {address}, dashboard {client.dashboard_link}")
            yield client
        finally:
            client.close()
        return
    workers = execution.workers or os.cpu_count() or 1
    memory: Any = execution.memory_limit
    if memory is None:
        import psutil

        memory = int(psutil.virtual_memory().total * 0.8 / workers)
    extra: dict[str, Any] = {}
    if worker_env and execution.processes:
        extra["env"] = dict(worker_env)
    import dask

    # Variables the nanny sets before it spawns a worker (read by the C runtime at start-up,
    # so they cannot go through ``env``); a None value removes one of Dask's defaults.
    before = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in (pre_spawn or {}).items()}
    # The nanny also copies them into this process's environment, which children inherit: a
    # variable removed here must leave it too (an earlier cluster in this process set it).
    saved = {
        k: os.environ.pop(k) for k, v in (pre_spawn or {}).items() if v is None and k in os.environ
    }
    with dask.config.set(before):
        for attempt in range(3):
            try:
                cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=execution.processes,
                    memory_limit=memory,
                    dashboard_address=":0",
                    silence_logs=logging.ERROR,
                    **extra,
                )
                break
            except AssertionError:
                # distributed gives its IO-loop thread 10 s to start and then fails an
                # assertion: on an overloaded machine, try again rather than fail the job
                if attempt == 2:
                    raise
                echo("dask: the LocalCluster's event loop did not start in time; retrying")
    os.environ.update(saved)
    try:
        client = Client(cluster)
        try:
            echo(f"dask: LocalCluster, {workers} workers, dashboard {client.dashboard_link}")
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


class Progress:
    """One self-overwriting status line on a terminal (stage, done/total, items/s, ETA);
    silent when the stream is not a terminal or progress is off."""

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self._last = 0.0
        self.workers_seen: set[str] = set()

    def watch(self, client: Any) -> None:
        """Note the cluster's current workers (from the client's cached scheduler info)."""
        self.workers_seen.update(client.scheduler_info().get("workers", {}))

    def workers_lost(self, client: Any) -> int:
        """Workers seen during the job that are gone now (killed for memory, crashed, or
        retired): their tasks were redone elsewhere."""
        self.watch(client)
        now = set(client.scheduler_info().get("workers", {}))
        return len(self.workers_seen - now)

    def update(self, stage: str, done: int, total: int, started: float, docs: int = 0) -> None:
        """Redraw the line (at most 10 times a second, and always for the last item)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        elapsed = max(now - started, 1e-9)
        eta = (total - done) * elapsed / done if done else 0.0
        rate = f"  {docs / elapsed:,.0f} docs/s" if docs else ""
        line = f"\r{stage}: {done}/{total}{rate}  ETA {_fmt(eta)}  elapsed {_fmt(elapsed)}"
        self.stream.write(line.ljust(78))
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _fmt(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def run_tasks(
    client: Any,
    stage: str,
    fn: Callable[..., Any],
    arg_lists: Sequence[Sequence[Any]],
    progress: Progress,
    docs_of: Callable[[Any], int] | None = None,
) -> list[Any]:
    """Run ``fn(*args)`` for every argument tuple on the cluster; results in input order.

    Tasks are retried on other workers if a worker dies (they are idempotent); the first task
    error is raised after the others are cancelled.
    """
    from distributed import as_completed

    if not arg_lists:
        return []
    started = time.monotonic()
    progress.watch(client)
    futures = [
        client.submit(fn, *args, pure=False, retries=2, key=f"{stage}-{i}-{os.urandom(4).hex()}")
        for i, args in enumerate(arg_lists)
    ]
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    docs = 0
    try:
        for done, fut in enumerate(as_completed(futures), start=1):
            results[index[fut.key]] = value = fut.result()
            if docs_of is not None:
                docs += docs_of(value)
            progress.update(stage, done, len(futures), started, docs)
            progress.watch(client)
    except BaseException:
        client.cancel(futures)
        raise
    return results
