"""``shardyard registry ...``: register, list, show, download, aliases, revoke, gc.

The registry location: ``--registry`` (a path for SQLite or a ``postgresql://`` URL), else
``SHARDYARD_REGISTRY``, else ``$SHARDYARD_HOME/registry.db``; blobs: ``--blobs``, else
``SHARDYARD_REGISTRY_BLOBS``, else ``$SHARDYARD_HOME/blobs``. Every read command takes
``--json``. The registry module is imported inside the commands, so that ``shardyard`` starts
without SQLAlchemy when it does something else.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer

from datastore.cli import JsonOpt, storage_config
from datastore.errors import InvalidInput
from registry.governance_cli import key_app, location_app, residency_app

if TYPE_CHECKING:
    from registry.registry import Registry, Version

__all__ = ["app"]

app = typer.Typer(
    help="Versioned datasets, tokenizers, checkpoints and models.", no_args_is_help=True
)
alias_app = typer.Typer(help="Move and inspect aliases.", no_args_is_help=True)
app.add_typer(alias_app, name="alias")

RegistryOpt = typer.Option(
    None,
    "--registry",
    help="Registry database: path (SQLite) or postgresql:// URL; or a server's http(s):// URL.",
)
BlobsOpt = typer.Option(None, "--blobs", help="Blob store: directory or s3:// URI.")


def _open(ctx: typer.Context, db: str | None, blobs: str | None) -> Registry:
    """The registry at ``db``: a database, or a server URL (``http(s)://``) used with the
    token in ``--token`` / ``SHARDYARD_TOKEN``."""
    import os

    location = db or os.environ.get("SHARDYARD_REGISTRY") or ""
    if location.startswith(("http://", "https://")):
        from registry.remote import RemoteRegistry

        token = ctx.find_root().meta.get("shardyard_token") or os.environ.get("SHARDYARD_TOKEN")
        return RemoteRegistry(location, token)  # type: ignore[return-value]
    from registry.registry import Registry

    return Registry(db, blobs, config=storage_config(ctx))


@app.callback()
def _main(
    ctx: typer.Context,
    token: str | None = typer.Option(
        None, "--token", help="API token for a registry server (else SHARDYARD_TOKEN)."
    ),
) -> None:
    """Versioned datasets, tokenizers, checkpoints and models."""
    if token:
        ctx.find_root().meta["shardyard_token"] = token


def _pairs(items: list[str], what: str) -> dict[str, str]:
    from registry.refs import parse_pairs

    return parse_pairs(items, what)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _show(v: Version) -> None:
    typer.echo(f"{v.ref}  ({v.kind}{', REVOKED' if v.revoked_at else ''})")
    typer.echo(f"  digest   {v.digest}")
    typer.echo(f"  created  {_when(v.created_at)} by {v.created_by}")
    if v.aliases:
        typer.echo(f"  aliases  {', '.join(v.aliases)}")
    if v.dataset_uri:
        typer.echo(f"  dataset  {v.dataset_uri} (version {v.dataset_version})")
    for k, val in sorted(v.tags.items()):
        typer.echo(f"  tag      {k}={val}")
    for k, m in sorted(v.metrics.items()):
        typer.echo(f"  metric   {k}={m:g}")
    for f in v.files:
        typer.echo(f"  file     {f.path}  {f.size:,} B  sha256:{f.sha256[:16]}")


@app.command()
def register(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="[namespace/]name"),
    paths: list[str] = typer.Argument(None, help="Files or directories to store."),
    kind: str = typer.Option(..., "--kind", "-k", help="dataset, tokenizer, checkpoint, ..."),
    tag: list[str] = typer.Option([], "--tag", help="key=value (repeatable)."),
    metric: list[str] = typer.Option([], "--metric", help="key=number (repeatable)."),
    parent: list[str] = typer.Option([], "--parent", help="Reference it derives from."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Point at a Shardyard dataset URI (its latest version)."
    ),
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Register a new version; prints its reference."""
    metrics = {}
    for k, v in _pairs(metric, "metric").items():
        try:
            metrics[k] = float(v)
        except ValueError:
            raise InvalidInput(f"metric {k}={v!r} is not a number") from None
    pointer = None
    if dataset is not None:
        from datastore import open_dataset

        ds = open_dataset(dataset, config=storage_config(ctx))
        pointer = (ds.uri, ds.version)
    reg = _open(ctx, db, blobs)
    version = reg.register(
        name,
        paths or [],
        kind=kind,
        tags=_pairs(tag, "tag"),
        metrics=metrics,
        parents=parent,
        dataset=pointer,
    )
    typer.echo(json.dumps(version.to_dict()) if as_json else str(version.ref))


@app.command("list")
def list_(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="An artifact (its versions), else all."),
    namespace: str | None = typer.Option(None, "--namespace", "-n"),
    limit: int = typer.Option(50, "--limit", help="Versions to show."),
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Artifacts, or the versions of one (newest first)."""
    reg = _open(ctx, db, blobs)
    if name is None:
        rows: list[Any] = reg.artifacts(namespace)
        if as_json:
            typer.echo(json.dumps(rows))
            return
        for r in rows:
            typer.echo(
                f"{r['artifact']}  {r['kind']}  {r['versions']} versions, latest {r['latest']}"
            )
        return
    versions = reg.versions(name, limit=limit)
    if as_json:
        typer.echo(json.dumps([v.to_dict() for v in versions]))
        return
    for v in versions:
        extra = f"  @{','.join(v.aliases)}" if v.aliases else ""
        revoked = "  REVOKED" if v.revoked_at else ""
        typer.echo(f"{v.ref}  {_when(v.created_at)}  {len(v.files)} files{extra}{revoked}")


@app.command()
def show(
    ctx: typer.Context,
    ref: str,
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """One version: files, tags, metrics, aliases."""
    version = _open(ctx, db, blobs).resolve(ref)
    if as_json:
        typer.echo(json.dumps(version.to_dict()))
    else:
        _show(version)


@app.command()
def download(
    ctx: typer.Context,
    ref: str,
    dest: str,
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
) -> None:
    """Download a version's files into DEST, each verified against its sha256."""
    version, _ = _open(ctx, db, blobs).fetch(ref, dest)
    if not version.files:
        pointer = f" (it points at {version.dataset_uri} version {version.dataset_version})"
        typer.echo(f"{version.ref} holds no files{pointer if version.dataset_uri else ''}")
        return
    typer.echo(f"{version.ref} -> {dest} ({len(version.files)} files, verified)")


@app.command()
def revoke(
    ctx: typer.Context,
    ref: str,
    reason: str = typer.Option("", "--reason"),
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
) -> None:
    """Revoke a version: kept for audit, never deployable or downloadable."""
    typer.echo(f"revoked {_open(ctx, db, blobs).revoke(ref, reason).ref}")


@app.command()
def delete(
    ctx: typer.Context,
    ref: str,
    reason: str = typer.Option(..., "--reason", help="Why (kept in the audit trail)."),
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
) -> None:
    """Delete a version's files (refused under a legal hold); the version stays, revoked."""
    typer.echo(f"deleted the files of {_open(ctx, db, blobs).delete(ref, reason).ref}")


hold_app = typer.Typer(help="Legal holds: versions that may not be deleted.", no_args_is_help=True)
app.add_typer(hold_app, name="hold")
app.add_typer(location_app, name="location")
app.add_typer(residency_app, name="residency")
app.add_typer(key_app, name="key")


@hold_app.command("set")
def hold_set(
    ctx: typer.Context,
    ref: str,
    reason: str = typer.Option(..., "--reason", help="Case or ticket reference."),
    whole: bool = typer.Option(False, "--artifact", help="Hold every version of the artifact."),
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
) -> None:
    """Put a version (or its whole artifact) under legal hold."""
    hid = _open(ctx, db, blobs).hold(ref, reason, whole_artifact=whole)
    typer.echo(f"hold {hid} on {ref}{' (whole artifact)' if whole else ''}")


@hold_app.command("list")
def hold_list(
    ctx: typer.Context,
    name: str,
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Active legal holds on an artifact."""
    found = _open(ctx, db, blobs).holds(name)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    for h in found:
        what = f"version {h['version']}" if h["version"] is not None else "every version"
        typer.echo(f"{h['id']:>5}  {what:<14}  {_when(h['created_at'])}  {h['reason']}")


@hold_app.command("release")
def hold_release(
    ctx: typer.Context,
    hold_id: int,
    name: str = typer.Option(..., "--artifact", help="The artifact the hold is on."),
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
) -> None:
    """End a legal hold."""
    reg: Any = _open(ctx, db, blobs)
    if hold_id not in {h["id"] for h in reg.holds(name)}:
        raise InvalidInput(f"no active legal hold {hold_id} on {name}")
    reg.release_hold(hold_id, name)
    typer.echo(f"released hold {hold_id}")


@app.command()
def lineage(
    ctx: typer.Context,
    ref: str,
    downstream: bool = typer.Option(
        False, "--downstream/--upstream", help="What was made from REF (default: its sources)."
    ),
    fmt: str = typer.Option("tree", "--format", "-f", help="tree, dot or openlineage."),
    depth: int | None = typer.Option(None, "--depth", help="Levels to walk (default: all)."),
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The lineage of REF as a tree, Graphviz DOT or OpenLineage-style JSON."""
    if fmt not in ("tree", "dot", "openlineage"):
        raise InvalidInput(f"--format {fmt!r}: tree, dot or openlineage")
    graph = _open(ctx, db, blobs).lineage(ref, "downstream" if downstream else "upstream", depth)
    typer.echo(graph.render("json" if as_json else fmt))


@app.command()
def link(
    ctx: typer.Context,
    parent: str,
    child: str,
    relation: str = typer.Option("derived", "--relation"),
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
) -> None:
    """Record that CHILD was made from PARENT (lineage by hand)."""
    _open(ctx, db, blobs).link(parent, child, relation)
    typer.echo(f"{parent} -> {child}")


@app.command()
def deployable(
    ctx: typer.Context,
    name: str,
    alias: str | None = typer.Option(None, "--alias", help="Only where this alias points."),
    metric: list[str] = typer.Option([], "--metric", help="'name>=value' (repeatable)."),
    upstream_tag: list[str] = typer.Option(
        [], "--upstream-tag", help="key=value every upstream dataset must carry (repeatable)."
    ),
    show_all: bool = typer.Option(False, "--all", help="Also the refused versions, with why."),
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Versions of NAME that satisfy the policy: not revoked, alias, metric thresholds, and a
    clean upstream (no revoked ancestor; required tags on upstream datasets)."""
    from registry.policy import Policy, parse_condition

    policy = Policy(
        alias=alias,
        conditions=[parse_condition(m) for m in metric],
        upstream_tags=_pairs(upstream_tag, "upstream tag"),
    )
    answers = _open(ctx, db, blobs).deployable(name, policy)
    shown = answers if show_all else [a for a in answers if a["deployable"]]
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {**a["version"].to_dict(), "deployable": a["deployable"], "why": a["why"]}
                    for a in shown
                ]
            )
        )
        return
    if not shown:
        typer.echo(f"no deployable version of {name}")
    for a in shown:
        mark = "deployable" if a["deployable"] else "refused: " + "; ".join(a["why"])
        typer.echo(f"{a['version'].ref}  {mark}")


@app.command()
def release(
    ctx: typer.Context,
    alias: str,
    refs: list[str] = typer.Argument(..., help="One version per artifact."),
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
) -> None:
    """Point ALIAS at every REF in one atomic step (a model, its tokenizer, its index...)."""
    for version in _open(ctx, db, blobs).release(refs, alias):
        typer.echo(f"{version.ref.artifact}@{alias} -> {version.ref}")


@app.command()
def gc(
    ctx: typer.Context,
    grace: float = typer.Option(
        86400.0, "--grace", help="Keep blobs (and claims) younger than this many seconds."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only report what would go."),
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Delete blobs no version references, older than --grace (safe while registering)."""
    report = _open(ctx, db, blobs).gc(grace, dry_run=dry_run)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    verb = "would delete" if dry_run else "deleted"
    typer.echo(
        f"scanned {report.scanned} blobs: {verb} {report.deleted} ({report.deleted_bytes:,} B); "
        f"kept {report.kept_referenced} referenced, {report.kept_young} younger than "
        f"{grace:g} s, {report.kept_claimed} claimed by registrations in progress"
        + (f", {report.skipped} left to the next run" if report.skipped else "")
    )


@alias_app.command("set")
def alias_set(
    ctx: typer.Context,
    ref: str,
    alias: str,
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
) -> None:
    """Point ALIAS at the version REF names."""
    version = _open(ctx, db, blobs).set_alias(ref, alias)
    typer.echo(f"{version.ref.artifact}@{alias} -> {version.ref}")


@alias_app.command("history")
def alias_history(
    ctx: typer.Context,
    name: str,
    alias: str,
    db: str | None = RegistryOpt,
    blobs: str | None = BlobsOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Every move of ALIAS on artifact NAME, oldest first."""
    moves = _open(ctx, db, blobs).alias_history(name, alias)
    if as_json:
        typer.echo(json.dumps(moves))
        return
    for m in moves:
        typer.echo(f"{_when(m['at'])}  -> version {m['version']}  by {m['actor']}")
