"""Compose ``shardyard`` from the packages' sub-apps; turn Shardyard errors into one line.

The sub-apps are imported only when their command is invoked (:class:`_LazyGroup`): ``shardyard
registry show`` imports ``registry.cli`` (and what the registry needs), never ``pipelines`` or the
dataset modules, so that a read in a fresh process answers quickly. ``shardyard --help`` lists
the commands from :data:`SUBCOMMANDS` without importing any of them.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any, TypeAlias

import typer
from typer.core import TyperCommand, TyperGroup

from datastore import ShardyardError, StorageConfig, __version__

__all__ = ["SUBCOMMANDS", "app", "load_subcommand", "main"]

# click's Command and HelpFormatter: typer's own copy of click in recent typer, click itself in
# older ones; not named here.
Command: TypeAlias = Any

#: Each top-level command: the module and attribute of its Typer app (a group) or command
#: function, and its one-line help for ``shardyard --help`` (tests check it against the real one).
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "tokenize": (
        "pipelines.cli",
        "tokenize_command",
        "Tokenize SOURCE's text column and pack it into fixed-length rows of a Zarr token "
        "dataset with per-row document boundaries.",
    ),
    "dataset": (
        "datastore.cli",
        "app",
        "Inspect and verify datasets (local paths, file:// or s3:// URIs).",
    ),
    "ingest": (
        "pipelines.cli",
        "app",
        "Ingest raw corpora (JSONL, Parquet, CSV, text; local or s3://) into a dataset.",
    ),
    "tokenizer": (
        "pipelines.cli",
        "tokenizer_app",
        "Tokenizers: train a BPE vocabulary on a dataset.",
    ),
    "registry": (
        "registry.cli",
        "app",
        "Versioned datasets, tokenizers, checkpoints and models.",
    ),
    "serve": (
        "registry.governance_cli",
        "serve_command",
        "Serve the registry over HTTP: every request needs an API token (shardyard token "
        "create); the OpenAPI description is at /openapi.json.",
    ),
    "token": (
        "registry.governance_cli",
        "token_app",
        "API tokens of the registry server.",
    ),
    "audit": (
        "registry.governance_cli",
        "audit_app",
        "The registry's hash-chained audit trail.",
    ),
    "embed": (
        "pipelines.rag_cli",
        "embed_command",
        "Chunk and embed SOURCE's documents into a Lance table with vector, full-text and "
        "access-group indexes; documents already embedded are not recomputed.",
    ),
    "index": (
        "pipelines.rag_cli",
        "index_app",
        "Vector indexes: search with access control, show what is served.",
    ),
}

_SETTINGS: dict[str, Any] = {
    # Plain (click) help: Rich takes 0.1-0.2 s to import; our errors are one line anyway.
    "rich_markup_mode": None,
    "pretty_exceptions_enable": False,
}


def load_subcommand(name: str) -> Command:
    """The click command of top-level command ``name``, built as ``app.add_typer`` /
    ``app.command`` would have (same settings as the root)."""
    module, attribute, _ = SUBCOMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    holder = typer.Typer(**_SETTINGS)
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    return typer.main.get_group(holder).commands[name]


class _LazyCommands(MutableMapping[str, Command]):
    """A group's ``commands``: every name of :data:`SUBCOMMANDS` is a key; its value (and
    module) is loaded on first access."""

    def __init__(self) -> None:
        self._loaded: dict[str, Command] = {}

    def __getitem__(self, name: str) -> Command:
        if name not in self._loaded:
            if name not in SUBCOMMANDS:
                raise KeyError(name)
            self._loaded[name] = load_subcommand(name)
        return self._loaded[name]

    def __setitem__(self, name: str, command: Command) -> None:
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        yield from SUBCOMMANDS
        yield from (n for n in self._loaded if n not in SUBCOMMANDS)

    def __len__(self) -> int:
        return len(SUBCOMMANDS) + sum(n not in SUBCOMMANDS for n in self._loaded)

    def loaded(self, name: str) -> bool:
        return name in self._loaded


class _LazyGroup(TyperGroup):
    """The root group: sub-commands load on use (``get_command`` goes through
    :class:`_LazyCommands`); listing and help need only their names and help lines."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        lazy = _LazyCommands()
        lazy.update(self.commands)
        self.commands = lazy

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        commands = self.commands
        assert isinstance(commands, _LazyCommands)
        limit = formatter.width - 6 - max(len(name) for name in commands)
        rows = []
        for name in commands:
            if name in SUBCOMMANDS and not commands.loaded(name):
                command: Command = TyperCommand(name=name, help=SUBCOMMANDS[name][2])
            else:
                command = commands[name]
            if not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    cls=_LazyGroup,
    help="Shardyard: sharded datasets, pipelines, loaders and a registry for LLM training.",
    no_args_is_help=True,
    **_SETTINGS,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"shardyard {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    endpoint_url: str | None = typer.Option(
        None, "--endpoint-url", help="S3 endpoint (else SHARDYARD_S3_ENDPOINT_URL, config, AWS)."
    ),
    region: str | None = typer.Option(None, "--region", help="S3 region."),
    profile: str | None = typer.Option(None, "--profile", help="AWS profile for credentials."),
    verbose: int = typer.Option(
        0,
        "--verbose",
        "-V",
        count=True,
        help="More logging: -V warnings (retries), -VV info, -VVV debug.",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Storage flags here apply to every sub-command."""
    # Quiet by default (errors are printed by main as one line); -V shows retries, -VVV debug.
    level = logging.ERROR - 10 * min(verbose, 3)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose < 3:
        # A Dask cluster torn down after an error can leave un-awaited futures whose
        # "exception was never retrieved" reports would follow our one-line error.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    overrides: dict[str, Any] = {"endpoint_url": endpoint_url, "region": region, "profile": profile}
    ctx.obj = {"storage": StorageConfig.resolve(overrides)}


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; any Shardyard error is one line on stderr and exit code 1."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="shardyard", standalone_mode=False)
        if isinstance(result, int) and result:  # typer.Exit(code) inside a command
            sys.exit(result)
    except ShardyardError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.TyperException as err:  # usage errors: click's one-line message and exit 2
        show = getattr(err, "show", None)
        if show is not None:
            show()
        else:
            typer.echo(f"error: {err}", err=True)
        sys.exit(getattr(err, "exit_code", 2))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:
        # a database error after the registry opened (locked too long, a dropped connection):
        # still one line, naming the database's complaint
        if type(err).__module__.split(".")[0] != "sqlalchemy":
            raise
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        typer.echo(f"error: registry database: {reason}", err=True)
        sys.exit(1)
