"""Registry benchmark: ours vs MLflow's model registry (SQLite backend, in process), side by side.

For each N in ``--sizes`` (default 1k, 10k, 100k) this makes a fresh registry on each side
holding one artifact / registered model with N versions, populated through each side's own
client, one call per version (ours: :meth:`registry.Registry.register`, each version holding
the same tiny file, which the blob store keeps once, a tag ``commit=c<i>``, a metric and a
lineage edge to a dataset version tagged ``license=approved``; MLflow: ``create_model_version``
with a local source path and the same tag, in ``registry_mlflow.py``, run in the MLflow venv
``benchmarks/.mlflow``). The population's time is reported. Then it times K calls of each
operation (after a few untimed warm-up calls), p50 and p99 in ms:

* register a version; set the alias ``production`` on a random version; resolve
  ``@production``; the latest 20 versions; search the artifact's versions by tag (one hit);
* ours only (MLflow has no policies or lineage): ``deployable`` under the default policy with
  ``license=approved`` upstream (every version, its upstream lineage walked), and under an alias
  policy (``alias="production"`` besides);
* a fresh process answering one read: ``shardyard registry show ns/name@production`` against
  MLflow's ``python -c "import mlflow; MlflowClient().get_model_version_by_alias(...)"``, the
  median wall time of ``--cli-repeats`` subprocesses (one untimed run first).

An operation stops early, after at least ``--min-samples`` calls, once its timed calls have
taken ``--op-budget`` seconds (``deployable`` at 100k versions takes many seconds a call); the
tables say how many calls were timed. Both processes pin themselves to one CPU (``--cpu``,
default 1) and run one after the other. Results: ``benchmarks/results/registry.md``, rewritten
after each size.

Run: ``make benchmarks/.mlflow/.done && .venv/bin/python benchmarks/bench_registry.py``
(small check: ``--sizes 200 --ops 50``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy
from bench_timing import pin, timed

import datastore
from registry import Registry
from registry.policy import Policy

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "benchmarks" / ".data" / "registry"
MLFLOW_PY = REPO / "benchmarks" / ".mlflow" / "bin" / "python"
MLFLOW_SCRIPT = REPO / "benchmarks" / "registry_mlflow.py"
OUT = REPO / "benchmarks" / "results" / "registry.md"

ARTIFACT = "bench/model"
DATASET = "bench/corpus"
ALIAS = "production"

# (key, label, whether MLflow has it, whether ours has it)
OPS = [
    ("register", "register a version", True, True),
    ("set_alias", "set alias", True, True),
    ("resolve_alias", "resolve by alias", True, True),
    ("latest_20", "latest 20 versions", True, True),
    ("search_tag", "search by tag", True, True),
    ("deployable", "deployable (default policy)", False, True),
    ("deployable_alias", "deployable (alias policy)", False, True),
]


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def size_label(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


def progress(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# -- ours ------------------------------------------------------------------------------------
def bench_ours(n: int, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    db, blobs = root / "registry.db", root / "blobs"
    weights = root / "src" / "model.bin"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"shardyard registry benchmark\n")
    corpus = root / "src" / "corpus.txt"
    corpus.write_bytes(b"a dataset stand-in\n")
    reg = Registry(str(db), str(blobs), actor="bench")
    out: dict[str, Any] = {}

    reg.register(DATASET, [corpus], kind="dataset", tags={"license": "approved"})
    parent = f"{DATASET}:1"

    def register(i: int) -> None:
        reg.register(
            ARTIFACT,
            [weights],
            kind="model",
            tags={"commit": f"c{i}"},
            metrics={"eval/accuracy": 0.5 + (i % 500) / 1000},
            parents=[parent],
        )

    t0 = time.perf_counter()
    step = max(1, n // 10)
    for i in range(1, n + 1):
        register(i)
        if i % step == 0:
            progress(f"ours: {i:,}/{n:,} versions ({i / (time.perf_counter() - t0):,.0f}/s)")
    out["populate"] = {
        "versions": n,
        "seconds": time.perf_counter() - t0,
        "method": "Registry.register, one call per version",
    }
    reg.set_alias(f"{ARTIFACT}:{max(1, n // 2)}", ALIAS)
    assert reg.versions(ARTIFACT, limit=1)[0].number == n
    assert reg.resolve(f"{ARTIFACT}@{ALIAS}").number == max(1, n // 2)

    rnd = random.Random(0)
    kw: dict[str, Any] = {
        "side": "ours",
        "warmup": args.warmup,
        "budget": args.op_budget,
        "min_samples": args.min_samples,
    }
    counter = [n]
    default_policy = Policy(upstream_tags={"license": "approved"})
    alias_policy = Policy(alias=ALIAS, upstream_tags={"license": "approved"})

    def new_version(_: int) -> None:
        counter[0] += 1
        register(counter[0])

    def set_alias(_: int) -> None:
        reg.set_alias(f"{ARTIFACT}:{rnd.randint(1, n)}", ALIAS)

    def resolve(_: int) -> None:
        reg.resolve(f"{ARTIFACT}@{ALIAS}")

    def latest_20(_: int) -> None:
        got = reg.versions(ARTIFACT, limit=20)
        assert len(got) == min(20, counter[0]), len(got)

    def search_tag(_: int) -> None:
        got = reg.find(tags={"commit": f"c{rnd.randint(1, n)}"}, name=ARTIFACT)
        assert len(got) == 1, len(got)

    def deployable(_: int) -> None:
        got = reg.deployable(ARTIFACT, default_policy)
        assert len(got) == counter[0] and all(r["deployable"] for r in got)

    def deployable_alias(_: int) -> None:
        got = reg.deployable(ARTIFACT, alias_policy)  # only the aliased version is judged
        assert len(got) == 1 and got[0]["deployable"]

    for op, call in [
        ("register", new_version),
        ("set_alias", set_alias),
        ("resolve_alias", resolve),
        ("latest_20", latest_20),
        ("search_tag", search_tag),
        ("deployable", deployable),
        ("deployable_alias", deployable_alias),
    ]:
        progress(f"ours: timing {op}")
        out[op] = timed(op, call, args.ops, **kw)
    reg.close()

    # A fresh process reading one version through the CLI.
    exe = Path(sys.executable).parent / "shardyard"
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "shardyard"]
    cmd = [*cli, "registry", "show", f"{ARTIFACT}@{ALIAS}", "--registry", str(db)]
    cmd += ["--blobs", str(blobs)]
    expected = Registry(str(db), str(blobs)).resolve(f"{ARTIFACT}@{ALIAS}").ref
    walls = []
    for i in range(args.cli_repeats + 1):  # the first run (page cache, .pyc files) not counted
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0 or not res.stdout.startswith(f"{expected} "):
            sys.exit(f"{shlex.join(cmd)} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
        if i:
            walls.append(wall)
    walls.sort()
    out["cold"] = {"samples": len(walls), "median_s": walls[len(walls) // 2], "runs_s": walls}
    out["cold_command"] = "shardyard registry show bench/model@production --registry DB --blobs DIR"
    return out


# -- MLflow ----------------------------------------------------------------------------------
def bench_mlflow(n: int, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    db = root / "mlflow.db"
    common = [str(MLFLOW_PY), str(MLFLOW_SCRIPT), "--db", str(db), "--cpu", str(args.cpu)]
    runs = [
        [
            *common,
            "--versions",
            str(n),
            "--ops",
            str(args.ops),
            "--warmup",
            str(args.warmup),
            "--op-budget",
            str(args.op_budget),
            "--min-samples",
            str(args.min_samples),
        ],
        [*common, "--cold", "--repeats", str(args.cli_repeats)],
    ]
    out: dict[str, Any] = {}
    for cmd in runs:
        progress(f"mlflow: {shlex.join(cmd[1:])}")
        # stderr (its progress lines) passes through; stdout holds one JSON object a line
        res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if res.returncode != 0:
            sys.exit(f"{shlex.join(cmd)} failed ({res.returncode}):\n{res.stdout}")
        for line in res.stdout.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                out["cold" if rec["op"] == "cold_resolve" else rec["op"]] = rec
    return out


# -- report ----------------------------------------------------------------------------------
def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        ram = f"{kib / 2**20:.0f} GiB RAM"
    except OSError:
        ram = "RAM unknown"
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {ram}, {platform.system()}"


def ms(rec: dict[str, Any] | None, key: str) -> str:
    if rec is None:
        return "n/a"
    v = rec[key]
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def ratio(mine: dict[str, Any] | None, theirs: dict[str, Any] | None, key: str) -> str:
    if mine is None or theirs is None:
        return "n/a"
    return f"{theirs[key] / mine[key]:.1f}x"


def report(results: dict[int, dict[str, Any]], args: argparse.Namespace, argv: list[str]) -> str:
    mlflow_meta = next(
        (r["mlflow"]["meta"] for r in results.values() if "meta" in r.get("mlflow", {})), None
    )
    lines = [
        "# Registry benchmark: ours vs MLflow's model registry (SQLite, in process)",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; both sides pinned to "
        f"CPU {args.pinned}, one after the other. Command: `.venv/bin/python "
        f"benchmarks/bench_registry.py {shlex.join(argv)}`.",
        "",
        f"- ours: Shardyard {datastore.__version__}, Python {platform.python_version()}, "
        f"SQLAlchemy {sqlalchemy.__version__}, SQLite {sqlite3.sqlite_version}",
    ]
    if mlflow_meta:
        lines.append(
            f"- MLflow {mlflow_meta['mlflow']} (the full `mlflow` package, venv "
            f"`benchmarks/.mlflow`: `make benchmarks/.mlflow/.done`), SQLAlchemy "
            f"{mlflow_meta['sqlalchemy']}, Python {mlflow_meta['python']}; script "
            "`benchmarks/registry_mlflow.py`"
        )
    lines += [
        f"- K = {args.ops} timed calls per operation after up to {args.warmup} untimed ones; "
        f"fewer where an operation's calls reached {args.op_budget:g} s (at least "
        f"{args.min_samples}); p50/p99 nearest-rank. Ratio: MLflow's time / ours (how many "
        "times faster we are; below 1.0x: slower). Goal: at least 10x MLflow on every "
        "registry operation, and a fresh-process CLI read under 0.5 s.",
        "",
    ]
    for n in sorted(results):
        r = results[n]
        ours, theirs = r.get("ours", {}), r.get("mlflow", {})
        lines += [
            f"## {n:,} versions",
            "",
            "| operation | ours p50 ms | ours p99 ms | MLflow p50 ms | MLflow p99 ms "
            "| MLflow/ours p50 | MLflow/ours p99 | calls ours / MLflow | 10x goal |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for key, label, in_mlflow, in_ours in OPS:
            a = ours.get(key) if in_ours else None
            b = theirs.get(key) if in_mlflow else None
            goal = "n/a"
            if a is not None and b is not None:
                goal = "met" if b["p50_ms"] / a["p50_ms"] >= 10 else "not met"
            calls = f"{a['samples'] if a else '-'} / {b['samples'] if b else '-'}"
            lines.append(
                f"| {label} | {ms(a, 'p50_ms')} | {ms(a, 'p99_ms')} | {ms(b, 'p50_ms')} "
                f"| {ms(b, 'p99_ms')} | {ratio(a, b, 'p50_ms')} | {ratio(a, b, 'p99_ms')} "
                f"| {calls} | {goal} |"
            )
        ca, cb = ours.get("cold"), theirs.get("cold")
        lines += [
            "",
            "| fresh process, one read (median wall s) | ours | MLflow | MLflow/ours | goal "
            "< 0.5 s |",
            "|---|---|---|---|---|",
            f"| `shardyard registry show` / import client + resolve alias "
            f"| {ca['median_s']:.2f} | {cb['median_s']:.2f} | "
            f"{cb['median_s'] / ca['median_s']:.1f}x | "
            f"{'met' if ca['median_s'] < 0.5 else 'not met'} |"
            if ca and cb
            else "| fresh process | n/a | n/a | n/a | n/a |",
            "",
            "| population (one client call per version) | seconds | ms per version |",
            "|---|---|---|",
        ]
        for side, label in (("ours", "ours (`Registry.register`)"), ("mlflow", "MLflow")):
            p = r.get(side, {}).get("populate")
            if p:
                lines.append(
                    f"| {label} | {p['seconds']:,.1f} | {p['seconds'] / p['versions'] * 1e3:.2f} |"
                )
            else:
                lines.append(f"| {label} | not measured | |")
        lines.append("")
    lines += [
        "## Notes",
        "",
        "- One artifact (ours: `bench/model`, kind model) / registered model (MLflow: "
        "`bench-model`) holds all N versions, in a new SQLite file on the same disk for each "
        "side and size. Both are populated through their own client, one call per version (no "
        "bulk SQL on either side); the timed `register` calls add K more.",
        "- `register` does not do the same work on both sides: ours hashes and stores a file "
        "in the content-addressed blob store (the same tiny file each time, so it is stored "
        "once and found after), claims it against GC, and writes the version with its file, "
        "tag, metric and lineage edge in one transaction, then reads it back; MLflow's "
        "`create_model_version` records a source path string and a tag (no upload: its "
        "artifacts are logged elsewhere, before).",
        "- `set alias` moves `production` to a random version (the same seeded sequence on "
        "both sides; ours also appends the move to the alias history). `resolve by alias`: "
        "ours `Registry.resolve('bench/model@production')` (the version with files, tags, "
        "metrics, aliases); MLflow `get_model_version_by_alias`. `latest 20 versions`: ours "
        "`Registry.versions(name, limit=20)`; MLflow `search_model_versions(\"name='...'\", "
        "order_by=['version_number DESC'], max_results=20)`.",
        "- MLflow's `set_registered_model_alias` first loads the whole registered model, every "
        "version included (`MlflowClient._raise_if_prompt` calls `get_registered_model`, seen "
        "with cProfile), so its time grows with N; its store's own alias write does not.",
        "- `search by tag`: MLflow `search_model_versions(\"name='...' and "
        "tags.commit='c<random>'\")` (one hit); ours `Registry.find(tags={'commit': "
        "'c<random>'}, name=...)`.",
        "- `deployable`: ours only, MLflow has no deployability policy or lineage. "
        "`Registry.deployable` returns every version of the artifact with `deployable`/`why` "
        "(the upstream lineage of all of them walked at once; one dataset version tagged "
        "`license=approved` here): its cost grows with N. Default policy: not revoked, "
        "upstream `license=approved`; alias policy: the same and `alias='production'`, which "
        "judges only the aliased version.",
        "- Fresh process: ours runs the `shardyard` console script (`registry show "
        "bench/model@production --registry DB --blobs DIR`, which prints the version); "
        "MLflow runs `python -c` importing `mlflow`, setting the SQLite tracking URI and "
        "calling `MlflowClient().get_model_version_by_alias`. Median of the timed runs, "
        "after one untimed run (warm page cache).",
        "- MLflow's telemetry is off (`MLFLOW_DISABLE_TELEMETRY=true`): this machine has no "
        "network. Its INFO logging is lowered to WARNING.",
        "- The machine is shared (2 cores): other work on it can add noise, mostly to p99.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1k,10k,100k", help="Versions per registry (N), comma list.")
    ap.add_argument("--ops", type=int, default=200, help="Timed calls per operation (K).")
    ap.add_argument("--warmup", type=int, default=3, help="Untimed calls per operation first.")
    ap.add_argument("--op-budget", type=float, default=60.0, help="Seconds per operation, at most.")
    ap.add_argument("--min-samples", type=int, default=3, help="Timed calls, at least.")
    ap.add_argument("--cli-repeats", type=int, default=5, help="Fresh processes timed.")
    ap.add_argument("--cpu", type=int, default=1, help="CPU to pin both sides to.")
    ap.add_argument("--no-mlflow", action="store_true", help="Ours only.")
    ap.add_argument("--workdir", default=str(DATA), help="Where the registries are made.")
    ap.add_argument("--out", default=str(OUT), help="The markdown report.")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if not args.no_mlflow and not MLFLOW_PY.exists():
        sys.exit("MLflow's environment is missing: make benchmarks/.mlflow/.done")
    args.pinned = pin(args.cpu)
    work = Path(args.workdir)
    results: dict[int, dict[str, Any]] = {}
    for n in sizes:
        root = work / size_label(n)
        shutil.rmtree(root, ignore_errors=True)
        progress(f"{n:,} versions: ours")
        results[n] = {"ours": bench_ours(n, root / "ours", args)}
        if not args.no_mlflow:
            progress(f"{n:,} versions: MLflow")
            results[n]["mlflow"] = bench_mlflow(n, root / "mlflow", args)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report(results, args, sys.argv[1:]))
        progress(f"{n:,} versions done: {out}")
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
