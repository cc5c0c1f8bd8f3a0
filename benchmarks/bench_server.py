"""Registry server under load: ``shardyard serve`` against MLflow's tracking server doing the
same reads, with 32 concurrent clients on loopback, side by side in one run.

Both hold one model with ``--versions`` versions (ours: ``bench/model``; MLflow: registered
model ``bench-model``) and the alias ``production`` on the middle one. Each server is one
process, or ``--workers`` of them (ours: uvicorn; MLflow: ``mlflow server``, SQLite backend),
and is measured alone: ``--clients`` keep-alive connections (``--client raw``: one asyncio
process speaking minimal HTTP/1.1, so the servers are what is measured; ``httpx``: threads with
httpx clients, ~1 ms of client CPU per request) send requests for ``--seconds`` seconds per
operation; latency is per request as the client sees
it (p50 / p99), throughput is requests per second over all clients. Operations:

* resolve by alias: ours ``GET /v1/versions/bench/model@production`` (the whole version:
  files, tags, metrics, aliases); MLflow ``GET /api/2.0/mlflow/registered-models/alias``;
* latest 20 versions: ours ``GET /v1/versions?name=bench/model&limit=20``; MLflow
  ``GET /api/2.0/mlflow/model-versions/search`` (``name='bench-model'``, 20, newest first);
* deployable (ours only: MLflow has no policy or lineage): ``GET /v1/deployable`` with the
  alias and an upstream tag condition.

Our server checks an API token on every request (MLflow's runs without authentication). The
clients and the server share this machine's cores, alike for both.

Run: ``.venv/bin/python benchmarks/bench_server.py [--versions 1000] [--clients 32]
[--workers 1] [--out benchmarks/results/server.md]``
(needs the MLflow venv: ``make benchmarks/.mlflow/.done``)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
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
DATA = REPO / "benchmarks" / ".data"
OUT = REPO / "benchmarks" / "results" / "server.md"
MLFLOW = REPO / "benchmarks" / ".mlflow" / "bin"

POPULATE_MLFLOW = """
import os, sys
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
import mlflow
from mlflow import MlflowClient
mlflow.set_tracking_uri(sys.argv[1])
c = MlflowClient()
c.create_registered_model("bench-model")
n = int(sys.argv[2])
for i in range(1, n + 1):
    c.create_model_version("bench-model", source=sys.argv[3], tags={"commit": f"c{i}"})
c.set_registered_model_alias("bench-model", "production", str(max(1, n // 2)))
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not come up")


def load(
    url: str, headers: dict[str, str], clients: int, seconds: float, client: str = "raw"
) -> dict[str, Any]:
    """``clients`` connections GETting ``url`` for ``seconds``: latencies and throughput.
    ``raw``: one asyncio process speaking minimal HTTP/1.1 keep-alive (tens of microseconds
    per request, so the servers, not the client, are what is measured); ``httpx``: threads
    with httpx clients (what a Python user runs; ~1 ms of client CPU per request)."""
    if client == "raw":
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            return pool.submit(_raw_load, url, headers, clients, seconds).result()
    return _httpx_load(url, headers, clients, seconds)


def _raw_load(url: str, headers: dict[str, str], clients: int, seconds: float) -> dict[str, Any]:
    import asyncio
    from urllib.parse import urlsplit

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
    lat: list[float] = []
    errors = [0]

    async def fetch(reader: Any, writer: Any) -> int:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        if "content-length" in fields:
            await reader.readexactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        return status

    async def one(stop: list[float], ready: asyncio.Event, count: list[int]) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        await fetch(reader, writer)  # connect and warm up
        count[0] += 1
        if count[0] == clients:
            ready.set()
        await ready.wait()
        while time.perf_counter() < stop[0]:
            t = time.perf_counter()
            status = await fetch(reader, writer)
            lat.append(time.perf_counter() - t)
            if status != 200:
                errors[0] += 1
        writer.close()

    async def main() -> float:
        stop = [float("inf")]
        ready = asyncio.Event()
        count = [0]
        tasks = [asyncio.create_task(one(stop, ready, count)) for _ in range(clients)]
        await ready.wait()
        began = time.perf_counter()
        stop[0] = began + seconds
        await asyncio.gather(*tasks)
        return time.perf_counter() - began

    wall = asyncio.run(main())
    every = sorted(lat)
    return {
        "requests": len(every),
        "errors": errors[0],
        "p50_ms": every[len(every) // 2] * 1e3,
        "p99_ms": every[min(len(every) - 1, int(len(every) * 0.99))] * 1e3,
        "rps": len(every) / wall,
    }


def _httpx_load(url: str, headers: dict[str, str], clients: int, seconds: float) -> dict[str, Any]:
    import httpx

    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    stop = [0.0]

    def worker(i: int) -> None:
        with httpx.Client(headers=headers, timeout=60) as c:
            c.get(url)  # connect and warm up
            start.wait()
            while time.perf_counter() < stop[0]:
                t = time.perf_counter()
                r = c.get(url)
                lat[i].append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    stop[0] = time.perf_counter() + seconds + 1e6  # set for real once all are ready
    start.wait()
    began = time.perf_counter()
    stop[0] = began + seconds
    for th in threads:
        th.join()
    wall = time.perf_counter() - began
    every = sorted(x for xs in lat for x in xs)
    return {
        "requests": len(every),
        "errors": sum(errors),
        "p50_ms": every[len(every) // 2] * 1e3,
        "p99_ms": every[min(len(every) - 1, int(len(every) * 0.99))] * 1e3,
        "rps": len(every) / wall,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=1, help="server processes, each side")
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if not (MLFLOW / "mlflow").exists():
        raise SystemExit("the MLflow venv is missing: make benchmarks/.mlflow/.done")
    DATA.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-server-", dir=DATA))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        return run(args, work, procs)
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, procs: list[subprocess.Popen[bytes]]) -> int:
    from registry import Registry, tokens

    n = args.versions
    weights = work / "src" / "model.bin"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"shardyard server benchmark\n")
    log(f"ours: {n:,} versions")
    reg = Registry(str(work / "ours.db"), str(work / "blobs"), actor="bench")
    reg.register("bench/corpus", kind="dataset", dataset=("file:///c", 1), tags={"lic": "ok"})
    for i in range(1, n + 1):
        reg.register(
            "bench/model",
            [weights],
            kind="model",
            tags={"commit": f"c{i}"},
            parents=["bench/corpus:1"],
        )
    reg.set_alias(f"bench/model:{max(1, n // 2)}", "production")
    token, _ = tokens.create_token(reg.engine, "bench", "reader")
    reg.close()
    log(f"mlflow: {n:,} versions")
    mdb = f"sqlite:///{work / 'mlflow.db'}"
    subprocess.run(
        [str(MLFLOW / "python"), "-c", POPULATE_MLFLOW, mdb, str(n), str(weights.parent)],
        check=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    ours_port, ml_port = free_port(), free_port()
    exe = Path(sys.executable).parent / "shardyard"
    procs.append(
        subprocess.Popen(
            [
                str(exe),
                "serve",
                "--registry",
                str(work / "ours.db"),
                "--blobs",
                str(work / "blobs"),
                "--port",
                str(ours_port),
                "--workers",
                str(args.workers),
            ],
            stderr=subprocess.DEVNULL,
        )
    )
    procs.append(
        subprocess.Popen(
            [
                str(MLFLOW / "mlflow"),
                "server",
                "--backend-store-uri",
                mdb,
                "--host",
                "127.0.0.1",
                "--port",
                str(ml_port),
                "--workers",
                str(args.workers),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        )
    )
    ours = f"http://127.0.0.1:{ours_port}"
    ml = f"http://127.0.0.1:{ml_port}"
    wait_up(f"{ours}/v1/health")
    wait_up(f"{ml}/health")
    auth = {"authorization": f"Bearer {token}"}
    cases = [
        (
            "resolve by alias",
            f"{ours}/v1/versions/bench/model@production",
            f"{ml}/api/2.0/mlflow/registered-models/alias?name=bench-model&alias=production",
        ),
        (
            "latest 20 versions",
            f"{ours}/v1/versions?name=bench/model&limit=20",
            f"{ml}/api/2.0/mlflow/model-versions/search?filter=name%3D%27bench-model%27"
            "&max_results=20&order_by=version_number%20DESC",
        ),
        (
            "deployable (alias + upstream tag)",
            f"{ours}/v1/deployable?name=bench/model&alias=production&upstream_tag=lic%3Dok",
            None,
        ),
    ]
    rows = []
    for label, our_url, ml_url in cases:
        log(f"{label}: ours")
        mine = load(our_url, auth, args.clients, args.seconds, args.client)
        theirs = None
        if ml_url is not None:
            log(f"{label}: mlflow")
            theirs = load(ml_url, {}, args.clients, args.seconds, args.client)
        rows.append((label, mine, theirs))
    write(args, rows)
    return 0


def write(args: argparse.Namespace, rows: list[tuple[str, Any, Any]]) -> None:
    lines = [
        "# Registry server under load: shardyard serve vs MLflow's tracking server",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} "
        f"cores), Python {platform.python_version()}. Command: `.venv/bin/python "
        f"benchmarks/bench_server.py --versions {args.versions} --clients {args.clients} "
        f"--seconds {args.seconds:g} --workers {args.workers} --client {args.client}`. "
        f"{args.workers} server process(es) each (ours `shardyard serve --workers "
        f"{args.workers}`, uvicorn with httptools and uvloop; MLflow `mlflow server --workers "
        f"{args.workers}`, SQLite). Client: "
        + (
            f"{args.clients} keep-alive connections from one asyncio process (minimal HTTP/1.1)"
            if args.client == "raw"
            else f"{args.clients} threads with httpx clients in one process"
        )
        + "; clients and servers share the machine's cores.",
        "",
        "| operation | ours p50 ms | ours p99 ms | ours req/s | MLflow p50 ms | MLflow p99 ms | "
        "MLflow req/s | req/s ours/MLflow | p50 MLflow/ours | errors ours / MLflow |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, m, t in rows:
        if t is None:
            lines.append(
                f"| {label} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['rps']:.0f} | n/a | n/a "
                f"| n/a | n/a | n/a | {m['errors']} / - |"
            )
            continue
        lines.append(
            f"| {label} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['rps']:.0f} | "
            f"{t['p50_ms']:.1f} | {t['p99_ms']:.1f} | {t['rps']:.0f} | "
            f"{m['rps'] / t['rps']:.2f}x | {t['p50_ms'] / m['p50_ms']:.2f}x | "
            f"{m['errors']} / {t['errors']} |"
        )
    lines.append("")
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
