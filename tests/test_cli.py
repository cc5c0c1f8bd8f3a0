"""``shardyard`` composed lazily: a command imports only its own package's CLI.

Each command runs in a fresh process (the way users start it) that reports which modules it
imported; the registry's read commands and the help pages must leave Dask, Zarr, PyTorch, the
pipelines and Rich unimported. Their answers are checked too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry import Registry
from shardyard.cli import SUBCOMMANDS, load_subcommand
from tests.registry.conftest import write_files

REPO = Path(__file__).resolve().parents[1]

# Runs ``shardyard ARGS...`` through shardyard.cli.main, then writes the names of all imported
# modules to the file named by its first argument (also when main exits, as it always does).
PROBE = """
import json, sys
out = sys.argv.pop(1)
try:
    from shardyard.cli import main
    main(sys.argv[1:])
finally:
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
"""

#: Never imported by a registry read or a help page.
HEAVY = ("dask", "distributed", "zarr", "torch", "pipelines", "loaders", "rich", "alembic")
#: Not imported by them either, once datastore.store / uri / _local import PyArrow lazily.
ARROW = ("pyarrow", "numpy")


class Ran:
    def __init__(self, proc: subprocess.CompletedProcess[str], modules: list[str]) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.packages = {m.split(".")[0] for m in modules}


def shardyard(home: Path, *args: str) -> Ran:
    """``shardyard ARGS...`` in a fresh process with ``SHARDYARD_HOME=home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SHARDYARD_"))}
    env.update(
        SHARDYARD_HOME=str(home),
        SHARDYARD_CONFIG=os.devnull,
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    out = home / "modules.json"
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    return Ran(proc, json.loads(out.read_text()))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding a dataset and a model made from it."""
    home = tmp_path_factory.mktemp("home")
    src = write_files(home / "src", **{"corpus.txt": "text\n", "model.bin": "weights"})
    reg = Registry(str(home / "registry.db"), str(home / "blobs"))
    reg.register("demo/corpus", [src / "corpus.txt"], kind="dataset", tags={"license": "ok"})
    reg.register(
        "demo/model",
        [src / "model.bin"],
        kind="model",
        metrics={"eval/loss": 2.5},
        parents=["demo/corpus:latest"],
    )
    reg.set_alias("demo/model:1", "production")
    return home


READS = [
    ["registry", "show", "demo/model:1"],
    ["registry", "show", "demo/model@production", "--json"],
    ["registry", "list"],
    ["registry", "list", "demo/model"],
    ["registry", "lineage", "demo/model:1"],
    ["registry", "deployable", "demo/model", "--upstream-tag", "license=ok"],
]
HELP = [["--help"], ["registry", "--help"], ["registry", "show", "--help"]]


@pytest.mark.parametrize("args", READS + HELP, ids=" ".join)
def test_registry_reads_and_help_import_only_what_they_use(home: Path, args: list[str]) -> None:
    ran = shardyard(home, *args)
    assert ran.returncode == 0, ran.stderr
    assert sorted(ran.packages & set(HEAVY)) == []
    if args[-1] == "--help":
        assert "sqlalchemy" not in ran.packages


def test_registry_show_imports_no_arrow(home: Path) -> None:
    ran = shardyard(home, "registry", "show", "demo/model:1")
    assert ran.returncode == 0, ran.stderr
    assert sorted(ran.packages & set(ARROW)) == []


def test_registry_read_answers(home: Path) -> None:
    show = shardyard(home, "registry", "show", "demo/model:1").stdout.splitlines()
    assert show[0] == "demo/model:1  (model)"
    assert "  aliases  production" in show
    assert "  metric   eval/loss=2.5" in show
    assert any(line.startswith("  file     model.bin  7 B  sha256:") for line in show)

    as_json = json.loads(
        shardyard(home, "registry", "show", "demo/model@production", "--json").stdout
    )
    assert (as_json["ref"], as_json["kind"], as_json["aliases"]) == (
        "demo/model:1",
        "model",
        ["production"],
    )

    listed = shardyard(home, "registry", "list").stdout.splitlines()
    assert listed == [
        "demo/corpus  dataset  1 versions, latest 1",
        "demo/model  model  1 versions, latest 1",
    ]
    assert (
        "demo/corpus:1 (dataset)" in shardyard(home, "registry", "lineage", "demo/model:1").stdout
    )
    deployable = shardyard(
        home, "registry", "deployable", "demo/model", "--upstream-tag", "license=x"
    )
    assert deployable.stdout.strip() == "no deployable version of demo/model"


def test_errors_stay_one_line(home: Path) -> None:
    missing = shardyard(home, "registry", "show", "demo/nope:1")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: no artifact demo/nope in the registry"

    typo = shardyard(home, "registy", "list")
    assert typo.returncode == 2
    assert "No such command 'registy'. Did you mean 'registry'?" in typo.stderr
    assert "Traceback" not in missing.stderr + typo.stderr


def test_top_level_help_lists_every_command(home: Path) -> None:
    ran = shardyard(home, "--help")
    commands = ran.stdout.split("Commands:", 1)[1].split()
    for name in ("tokenize", "dataset", "ingest", "tokenizer", "registry"):
        assert name in commands
    assert "pipelines" not in ran.packages


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_listed_help_is_the_commands_own(name: str) -> None:
    """SUBCOMMANDS' help lines (shown without importing the commands) say what the commands
    themselves say, at any terminal width."""
    from typer.core import TyperCommand

    real = load_subcommand(name)
    listed = TyperCommand(name=name, help=SUBCOMMANDS[name][2])
    for width in (30, 45, 60, 80, 120, 200):
        assert listed.get_short_help_str(width) == real.get_short_help_str(width)
