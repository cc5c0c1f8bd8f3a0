"""MLflow's model registry (SQLite backend, in process), the peer of ``bench_registry.py``.

Runs inside the MLflow venv (``make benchmarks/.mlflow/.done``) and imports no Shardyard code.
Given ``--db PATH --versions N --ops K`` it creates a registered model with N versions in a new
SQLite registry through ``MlflowClient`` (no runs are logged: each version's source is the path
of a small local directory; each carries a tag ``commit=c<i>``), points the alias
``production`` at version N/2, then times K calls of each operation (after a few untimed
warm-up calls) and prints one JSON line per operation on stdout:

* ``register``: ``create_model_version(name, source, tags={"commit": ...})``;
* ``set_alias``: ``set_registered_model_alias(name, "production", <random version>)``;
* ``resolve_alias``: ``get_model_version_by_alias(name, "production")``;
* ``latest_20``: ``search_model_versions("name='...'", order_by=["version_number DESC"],
  max_results=20)``;
* ``search_tag``: ``search_model_versions("name='...' and tags.commit='c<random>'")`` (one hit).

An operation stops early, after at least ``--min-samples`` calls, once its timed calls have
taken ``--op-budget`` seconds in all (the line says how many calls were timed).

``--cold`` (on a registry made before) instead times ``--repeats`` fresh processes that import
the client and resolve the alias once (wall time of the subprocess, one untimed run first).

The process pins itself to CPU ``--cpu`` (the last CPU it may use when that one is not).
MLflow's telemetry is switched off (``MLFLOW_DISABLE_TELEMETRY``): this machine has no
network, and it is no part of the registry's work.

Run: ``benchmarks/.mlflow/bin/python benchmarks/registry_mlflow.py --db DIR/mlflow.db
--versions 1000 --ops 100`` (``bench_registry.py`` runs it for you).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

from bench_timing import pin, timed

NAME = "bench-model"
ALIAS = "production"

# The cold check: a fresh interpreter imports the client and resolves one alias.
COLD_SNIPPET = """
import sys
import mlflow
from mlflow import MlflowClient

mlflow.set_tracking_uri(sys.argv[1])
print(MlflowClient().get_model_version_by_alias(sys.argv[2], sys.argv[3]).version)
"""


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def quiet() -> None:
    """MLflow's and alembic's INFO lines (table creation, migrations) off stderr."""
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")


def source_dir(db: Path) -> Path:
    """A small local directory standing for a model's artifacts (MLflow stores its path)."""
    src = db.parent / f"{db.name}.source"
    src.mkdir(parents=True, exist_ok=True)
    (src / "model.bin").write_bytes(b"shardyard registry benchmark\n")
    return src


def run_ops(args: argparse.Namespace) -> None:
    import mlflow
    import sqlalchemy
    from mlflow import MlflowClient

    quiet()
    db = Path(args.db).resolve()
    if db.exists():
        sys.exit(f"{db} exists: give a new path (the registry is made afresh)")
    db.parent.mkdir(parents=True, exist_ok=True)
    src = str(source_dir(db))
    uri = f"sqlite:///{db}"
    mlflow.set_tracking_uri(uri)
    emit(
        {
            "side": "mlflow",
            "op": "meta",
            "mlflow": mlflow.__version__,
            "sqlalchemy": sqlalchemy.__version__,
            "python": sys.version.split()[0],
            "cpu": args.pinned,
            "uri": uri,
        }
    )
    client = MlflowClient()
    n = args.versions

    t0 = time.perf_counter()
    client.create_registered_model(NAME)  # creates the tables (not counted per version)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    step = max(1, n // 10)
    for i in range(n):
        client.create_model_version(NAME, source=src, tags={"commit": f"c{i + 1}"})
        if (i + 1) % step == 0:
            rate = (i + 1) / (time.perf_counter() - t0)
            print(f"mlflow: {i + 1:,}/{n:,} versions ({rate:,.0f}/s)", file=sys.stderr)
    populate = time.perf_counter() - t0
    emit(
        {
            "side": "mlflow",
            "op": "populate",
            "versions": n,
            "seconds": populate,
            "setup_seconds": setup,
            "method": "MlflowClient.create_model_version, one call per version",
        }
    )
    client.set_registered_model_alias(NAME, ALIAS, str(max(1, n // 2)))

    # Checks that the registry holds what it should before timing reads of it.
    latest = client.search_model_versions(
        f"name='{NAME}'", order_by=["version_number DESC"], max_results=1
    )
    assert int(latest[0].version) == n, latest
    assert int(client.get_model_version_by_alias(NAME, ALIAS).version) == max(1, n // 2)

    rnd = random.Random(0)
    kw: dict[str, Any] = {
        "side": "mlflow",
        "warmup": args.warmup,
        "budget": args.op_budget,
        "min_samples": args.min_samples,
    }
    counter = [n]

    def register(_: int) -> None:
        counter[0] += 1
        client.create_model_version(NAME, source=src, tags={"commit": f"c{counter[0]}"})

    def set_alias(_: int) -> None:
        client.set_registered_model_alias(NAME, ALIAS, str(rnd.randint(1, n)))

    def resolve(_: int) -> None:
        client.get_model_version_by_alias(NAME, ALIAS)

    def latest_20(_: int) -> None:
        got = client.search_model_versions(
            f"name='{NAME}'", order_by=["version_number DESC"], max_results=20
        )
        assert len(got) == 20 or len(got) == counter[0], len(got)

    def search_tag(_: int) -> None:
        got = client.search_model_versions(f"name='{NAME}' and tags.commit='c{rnd.randint(1, n)}'")
        assert len(got) == 1, len(got)

    emit(timed("register", register, args.ops, **kw))
    emit(timed("set_alias", set_alias, args.ops, **kw))
    emit(timed("resolve_alias", resolve, args.ops, **kw))
    emit(timed("latest_20", latest_20, args.ops, **kw))
    emit(timed("search_tag", search_tag, args.ops, **kw))


def run_cold(args: argparse.Namespace) -> None:
    db = Path(args.db).resolve()
    if not db.exists():
        sys.exit(f"{db} does not exist: run without --cold first")
    cmd = [sys.executable, "-c", COLD_SNIPPET, f"sqlite:///{db}", NAME, ALIAS]
    walls = []
    answer = ""
    for i in range(args.repeats + 1):  # the first run (page cache, .pyc files) is not counted
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"the cold resolve failed:\n{out.stderr[-2000:]}")
        answer = out.stdout.strip().splitlines()[-1]
        if i:
            walls.append(wall)
    walls.sort()
    emit(
        {
            "side": "mlflow",
            "op": "cold_resolve",
            "samples": len(walls),
            "median_s": walls[len(walls) // 2],
            "runs_s": walls,
            "resolved_version": answer,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", required=True, help="SQLite file of the registry (made afresh).")
    ap.add_argument("--versions", type=int, default=1000, help="Versions to populate (N).")
    ap.add_argument("--ops", type=int, default=200, help="Timed calls per operation (K).")
    ap.add_argument("--warmup", type=int, default=3, help="Untimed calls per operation first.")
    ap.add_argument("--op-budget", type=float, default=60.0, help="Seconds per operation, at most.")
    ap.add_argument("--min-samples", type=int, default=3, help="Timed calls, at least.")
    ap.add_argument("--cold", action="store_true", help="Time fresh processes resolving once.")
    ap.add_argument("--repeats", type=int, default=5, help="Fresh processes (--cold).")
    ap.add_argument("--cpu", type=int, default=1, help="CPU to pin to.")
    args = ap.parse_args()
    args.pinned = pin(args.cpu)
    if args.cold:
        run_cold(args)
    else:
        run_ops(args)


if __name__ == "__main__":
    main()
