"""``shardyard dataset ...``: inspect, verify and list dataset versions.

The dataset modules (PyArrow, NumPy) are imported inside the commands: the other packages'
CLIs import :func:`storage_config` and :data:`JsonOpt` from here, and must start without them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

from datastore.config import StorageConfig
from datastore.errors import Corrupt

if TYPE_CHECKING:
    from datastore.dataset import ArrayDataset, TableDataset

__all__ = ["app", "storage_config"]

app = typer.Typer(help="Inspect and verify datasets (local paths, file:// or s3:// URIs).")

VersionOpt = typer.Option(None, "--version", "-v", help="Version to read (default: latest).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")


def storage_config(ctx: typer.Context) -> StorageConfig:
    """The StorageConfig the root command resolved from flags, env and config file."""
    obj = ctx.find_root().obj
    if isinstance(obj, dict) and isinstance(obj.get("storage"), StorageConfig):
        config: StorageConfig = obj["storage"]
        return config
    return StorageConfig.resolve()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def _summary(ds: TableDataset | ArrayDataset) -> dict[str, Any]:
    from datastore.dataset import ArrayDataset
    from datastore.manifest import schema_to_json

    m = ds.manifest
    out: dict[str, Any] = {
        "uri": ds.uri,
        "version": ds.version,
        "kind": m.kind,
        "format": m.table_format if m.kind == "table" else "zarr",
        "rows": len(ds),
        "bytes": m.nbytes,
        "num_shards": len(m.objects),
        "schema": schema_to_json(m.schema)["fields"] if m.schema is not None else None,
        "created": {"at": m.created.at, "by": m.created.by, "host": m.created.host},
        "parents": [{"uri": p.uri, "version": p.version} for p in m.parents],
    }
    if isinstance(ds, ArrayDataset):
        out["arrays"] = [
            {
                "name": a.name,
                "shape": a.shape,
                "dtype": a.dtype,
                "chunks": a.chunks,
                "shards": a.shards,
            }
            for a in m.arrays
        ]
    return out


@app.command()
def info(
    ctx: typer.Context, uri: str, version: int | None = VersionOpt, as_json: bool = JsonOpt
) -> None:
    """Summarise one version: rows, bytes, shards, format and schema."""
    from datastore.dataset import open_dataset

    ds = open_dataset(uri, version, config=storage_config(ctx))
    s = _summary(ds)
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    typer.echo(f"dataset   {s['uri']}")
    typer.echo(f"version   {s['version']}")
    typer.echo(f"kind      {s['kind']} ({s['format']})")
    typer.echo(f"rows      {s['rows']:,}")
    typer.echo(f"bytes     {s['bytes']:,} ({_human(s['bytes'])})")
    typer.echo(f"shards    {s['num_shards']}")
    typer.echo(f"created   {s['created']['at']} by {s['created']['by']} on {s['created']['host']}")
    for p in s["parents"]:
        typer.echo(f"parent    {p['uri']} v{p['version']}")
    if s["schema"]:
        typer.echo("schema")
        width = max(len(f["name"]) for f in s["schema"])
        for f in s["schema"]:
            null = "" if f["nullable"] else " not null"
            typer.echo(f"  {f['name']:<{width}}  {f['type']}{null}")
    for a in s.get("arrays", []):
        typer.echo(f"array     {a['name']} {a['dtype']} shape={a['shape']} shards={a['shards']}")


@app.command()
def verify(
    ctx: typer.Context, uri: str, version: int | None = VersionOpt, as_json: bool = JsonOpt
) -> None:
    """Re-read every shard and check sizes and checksums; exit 1 naming any bad shard."""
    from datastore.dataset import open_dataset

    ds = open_dataset(uri, version, config=storage_config(ctx))
    result = ds.verify()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "uri": ds.uri,
                    "version": ds.version,
                    "ok": result.ok,
                    "checked": result.checked,
                    "bytes": result.bytes,
                    "problems": result.problems,
                }
            )
        )
    elif result.ok:
        typer.echo(
            f"ok: {ds.uri} version {ds.version}: {result.checked} objects, "
            f"{_human(result.bytes)} verified"
        )
    if not result.ok:
        if not as_json:
            for problem in result.problems:
                typer.echo(problem, err=True)
        raise Corrupt(
            f"{len(result.problems)} of {result.checked} objects of {ds.uri} version "
            f"{ds.version} are damaged; first: {result.problems[0]}"
        )


@app.command()
def head(
    ctx: typer.Context,
    uri: str,
    n: int = typer.Option(10, "-n", help="Rows to show."),
    version: int | None = VersionOpt,
    columns: str | None = typer.Option(None, "--columns", "-c", help="Comma-separated columns."),
    as_json: bool = JsonOpt,
) -> None:
    """Print the first N rows (JSON lines with --json)."""
    from datastore.dataset import ArrayDataset, open_dataset

    ds = open_dataset(uri, version, config=storage_config(ctx))
    if isinstance(ds, ArrayDataset):
        for name in ds.array_names:
            typer.echo(f"{name}: {ds.array(name)[:n].tolist()}")
        return
    cols = [c.strip() for c in columns.split(",")] if columns else None
    table = ds.head(n, cols)
    if as_json:
        for row in table.to_pylist():
            typer.echo(json.dumps(row, default=str, ensure_ascii=False))
    else:
        typer.echo(_format_rows(table.schema.names, table.to_pylist()))


def _format_rows(names: list[str], rows: list[dict[str, Any]], width: int = 40) -> str:
    def cell(v: Any) -> str:
        text = str(v).replace("\n", "\\n")
        return text if len(text) <= width else text[: width - 1] + "…"

    grid = [names] + [[cell(r[n]) for n in names] for r in rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(names))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in grid
    )


@app.command()
def versions(ctx: typer.Context, uri: str, as_json: bool = JsonOpt) -> None:
    """List committed versions with their row counts and creation times."""
    from datastore.dataset import dataset_versions, open_dataset

    config = storage_config(ctx)
    found = dataset_versions(uri, config)
    rows: list[dict[str, Any]] = []
    for v in found:
        m = open_dataset(uri, v, config=config).manifest
        rows.append({"version": v, "rows": m.rows, "bytes": m.nbytes, "created": m.created.at})
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo(f"no committed versions at {uri}")
    for r in rows:
        typer.echo(
            f"v{r['version']:<6} {r['rows']:>12,} rows  {_human(r['bytes']):>10}  {r['created']}"
        )
