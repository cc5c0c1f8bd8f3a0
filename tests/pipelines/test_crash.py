"""Crash safety and distributed execution with real processes: kill -9 the client mid-job and
rerun; kill -9 a worker of an external ``dask scheduler`` + ``dask worker`` cluster. Either way
the committed shards are byte-identical to an uninterrupted run, and only unfinished tasks are
redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from datastore import open_dataset
from pipelines import ingest
from pipelines.config import IngestConfig, load_config
from tests.pipelines.conftest import cli_env, write_corpus

pytestmark = pytest.mark.xdist_group("crash")

CONFIG = """
[input]
partition_bytes = 65536
[filters]
enabled = false
[dedup.fuzzy]
verify_jaccard = true
[[stages]]
function = "tests.pipelines.user_stages:slow"
mode = "batch"
options = { seconds = 0.25 }
[execution]
workers = 1
processes = false
progress = false
"""


def _sums(uri: str) -> list[tuple[str, int]]:
    return [(s.checksum, s.rows) for s in open_dataset(uri).manifest.shards]


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The corpus, the config file and the result of an uninterrupted run."""
    root = tmp_path_factory.mktemp("crash")
    write_corpus(root / "src")
    cfg = root / "pipeline.toml"
    cfg.write_text(CONFIG)
    report = ingest([str(root / "src")], str(root / "baseline"), load_config(cfg))
    assert report.partitions > 6
    return {
        "root": root,
        "src": str(root / "src"),
        "config": cfg,
        "report": report,
        "sums": _sums(str(root / "baseline")),
        "removed": _sums(str(root / "baseline" / "_removed")),
    }


def _markers(out: Path, phase: str) -> int:
    work = out / "_work"
    return sum(1 for _ in work.glob(f"*/{phase}/*.json")) if work.exists() else 0


def _wait_for(predicate: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the job to make progress")
        time.sleep(0.05)


@pytest.mark.parametrize("phase,after", [("prepared", 3), ("final", 1)])
def test_kill_client_and_rerun(job: dict[str, Any], tmp_path: Path, phase: str, after: int) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "shardyard",
        "ingest",
        job["src"],
        "-o",
        str(out),
        "-c",
        str(job["config"]),
        "--json",
    ]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: _markers(out, phase) >= after or proc.poll() is not None)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "_manifests").exists()  # nothing committed by the killed run
    # the rerun may use another number of workers: the job's identity does not depend on it
    done = subprocess.run(
        [*cmd, "--workers", "2"], env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["partitions_resumed"] >= (after if phase == "prepared" else 1)
    assert report["docs_out"] == job["report"].docs_out
    assert _sums(str(out)) == job["sums"]
    assert _sums(str(out / "_removed")) == job["removed"]
    assert open_dataset(str(out)).version == 1


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A real scheduler and two worker processes (each under a nanny that restarts it)."""
    sched_file = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                ":0",
                "--scheduler-file",
                str(sched_file),
            ],
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        _wait_for(sched_file.exists, 60)
        _wait_for(lambda: "address" in sched_file.read_text(), 60)
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "distributed.cli.dask_worker",
                        address,
                        "--nthreads",
                        "1",
                        "--nworkers",
                        "1",
                        "--memory-limit",
                        "2GiB",
                        "--dashboard-address",
                        ":0",
                    ],
                    env=cli_env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=tmp_path,
                )
            )
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield {"address": address, "nannies": procs[1:]}
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def test_external_cluster_survives_a_killed_worker(
    job: dict[str, Any], cluster: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = load_config(job["config"])
    doc = config.to_dict()
    doc["execution"].update(scheduler=cluster["address"], processes=True)
    config = IngestConfig.from_dict(doc)
    killed: list[int] = []

    def killer() -> None:
        _wait_for(lambda: _markers(out, "prepared") >= 2)
        nanny = psutil.Process(cluster["nannies"][0].pid)
        workers = [c for c in nanny.children(recursive=True) if c.is_running()]
        for w in workers:
            killed.append(w.pid)
            os.kill(w.pid, signal.SIGKILL)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    report = ingest([job["src"]], str(out), config)
    t.join(10)
    assert killed, "the worker was not killed mid-job"
    assert report.workers_lost >= 1
    assert report.docs_out == job["report"].docs_out
    assert _sums(str(out)) == job["sums"]
    assert _sums(str(out / "_removed")) == job["removed"]
