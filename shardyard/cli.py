"""Compose ``shardyard`` from the packages' sub-apps; turn Shardyard errors into one line."""

from __future__ import annotations

import logging
import sys
from typing import Any

import typer

import datastore.cli
import pipelines.cli
import registry.cli
from datastore import ShardyardError, StorageConfig, __version__

__all__ = ["app", "main"]

app = typer.Typer(
    help="Shardyard: sharded datasets, pipelines, loaders and a registry for LLM training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(datastore.cli.app, name="dataset")
app.add_typer(pipelines.cli.app, name="ingest")
app.command("tokenize")(pipelines.cli.tokenize_command)
app.add_typer(pipelines.cli.tokenizer_app, name="tokenizer")
app.add_typer(registry.cli.app, name="registry")


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
