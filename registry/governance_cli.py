"""``shardyard token ...`` (API tokens) and ``shardyard audit ...`` (the audit trail).

Run against the registry database (``--registry``: a path or ``postgresql://`` URL, default as
for ``shardyard registry``): whoever can open the database is the operator and may do
everything; the server's clients manage tokens through the server with an admin token.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from datastore.cli import JsonOpt
from datastore.errors import InvalidInput

__all__ = [
    "audit_app",
    "key_app",
    "location_app",
    "residency_app",
    "serve_command",
    "token_app",
]

token_app = typer.Typer(help="API tokens of the registry server.", no_args_is_help=True)
audit_app = typer.Typer(help="The registry's hash-chained audit trail.", no_args_is_help=True)

RegistryOpt = typer.Option(
    None, "--registry", help="Registry database: path (SQLite) or postgresql:// URL."
)


def _engine(db: str | None) -> Any:
    import os

    from registry.db import open_engine
    from registry.registry import default_home

    location = db or os.environ.get("SHARDYARD_REGISTRY") or str(default_home() / "registry.db")
    return open_engine(location)


def _operator() -> Any:
    """The local operator (database access: every right), named after the OS user as local
    registry changes are."""
    from registry.registry import _whoami
    from registry.tokens import Principal

    return Principal(_whoami(), "*", "admin", operator=True)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@token_app.command("create")
def token_create(
    namespace: str = typer.Option(..., "--namespace", "-n", help="Scope ('*': every one)."),
    role: str = typer.Option(..., "--role", "-r", help="reader, writer or admin."),
    expires: str | None = typer.Option(None, "--expires", help="Lifetime, e.g. 30d, 12h."),
    note: str = typer.Option("", "--note", help="What the token is for."),
    group: list[str] = typer.Option(
        [], "--group", "-g", help="Access group for index searches (repeatable)."
    ),
    db: str | None = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Create a token; its secret is printed once (store it: only a hash is kept). Its
    --group values are what searches through the server may read."""
    from registry.tokens import create_token, parse_duration

    lifetime = parse_duration(expires) if expires else None
    secret, info = create_token(
        _engine(db),
        namespace,
        role,
        expires_in=lifetime,
        note=note,
        by=_operator(),
        groups=group,
    )
    if as_json:
        typer.echo(json.dumps({"token": secret, **info.to_dict()}, indent=2, sort_keys=True))
        return
    typer.echo(secret)
    typer.echo(
        f"id {info.id}, {info.role} in {info.namespace!r}, expires {_when(info.expires_at)}"
        + (f", groups {', '.join(info.groups)}" if info.groups else ""),
        err=True,
    )


@token_app.command("list")
def token_list(db: str | None = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Every token (never its secret)."""
    from registry.tokens import list_tokens

    found = list_tokens(_engine(db))
    if as_json:
        typer.echo(json.dumps([i.to_dict() for i in found], indent=2, sort_keys=True))
        return
    for i in found:
        state = "revoked" if i.revoked_at else "active"
        typer.echo(
            f"{i.id}  {i.role:<6}  {i.namespace:<24}  {state:<7}  expires {_when(i.expires_at)}"
            f"  {i.note}"
        )


@token_app.command("revoke")
def token_revoke(
    token_id: str = typer.Argument(..., help="The token's id."), db: str | None = RegistryOpt
) -> None:
    """Revoke a token: its next request is refused."""
    from registry.tokens import revoke_token

    info = revoke_token(_engine(db), token_id, by=_operator())
    typer.echo(f"revoked {info.id} ({info.role} in {info.namespace!r})")


@audit_app.command("verify")
def audit_verify(db: str | None = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Check the chain: exits 1 naming every record edited, inserted or removed."""
    from registry.audit import head, verify

    engine = _engine(db)
    count, problems = verify(engine)
    seq, digest = head(engine)
    if as_json:
        doc = {
            "records": count,
            "ok": not problems,
            "problems": [{"seq": p.seq, "what": p.what} for p in problems],
            "head": {"seq": seq, "hash": digest},
        }
        typer.echo(json.dumps(doc, indent=2))
    elif problems:
        for p in problems:
            typer.echo(f"audit: {p}", err=True)
    else:
        typer.echo(f"audit trail intact: {count} records, head {seq} {digest}")
    if problems:
        raise typer.Exit(1)


@audit_app.command("log")
def audit_log(
    since: str | None = typer.Option(
        None, "--since", help="ISO date/time (UTC) or a duration back from now (e.g. 7d)."
    ),
    actor: str | None = typer.Option(None, "--actor", help="Only this actor."),
    artifact: str | None = typer.Option(
        None, "--artifact", help="Only this artifact (ns/name) or reference."
    ),
    action: str | None = typer.Option(None, "--action", help="register, alias, download..."),
    limit: int | None = typer.Option(None, "--limit", help="At most this many records."),
    db: str | None = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Query the audit trail, oldest first."""
    from registry.audit import records
    from registry.refs import parse_ref

    target = None
    if artifact is not None:
        ref = parse_ref(artifact)
        target = str(ref) if (ref.version or ref.alias) else ref.artifact
    found = records(
        _engine(db),
        since=_since(since),
        actor=actor,
        target=target,
        action=action,
        limit=limit,
    )
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in found], indent=2, sort_keys=True))
        return
    for r in found:
        detail = json.dumps(r.detail, sort_keys=True) if r.detail else ""
        typer.echo(
            f"{r.seq:>6}  {_when(r.at)}  {r.actor:<20}  {r.action:<12}  {r.target}  {detail}"
        )


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    import time

    from registry.tokens import parse_duration

    try:
        return time.time() - parse_duration(text)
    except InvalidInput:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"--since {text!r}: an ISO date/time (2026-11-28T10:00) or a duration (7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def serve_command(
    ctx: typer.Context,
    db: str | None = RegistryOpt,
    blobs: str | None = typer.Option(None, "--blobs", help="Blob store: directory or s3:// URI."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8765, "--port", help="Port to listen on."),
    workers: int = typer.Option(
        1, "--workers", "-w", help="Server processes sharing the port (one per core)."
    ),
    search_root: list[str] = typer.Option(
        [],
        "--search-root",
        help="Where searchable indexes live: one directory per namespace, URI/NS/ (repeatable).",
    ),
) -> None:
    """Serve the registry over HTTP: every request needs an API token (shardyard token
    create); the OpenAPI description is at /openapi.json. Several servers (hosts) behind one
    address share signed URLs when SHARDYARD_SIGNING_KEY (hex) is the same on each."""
    from datastore.cli import storage_config
    from registry.server import serve

    typer.echo(
        f"shardyard registry server on http://{host}:{port} (OpenAPI: /openapi.json)", err=True
    )
    serve(
        db,
        blobs,
        host,
        port,
        config=storage_config(ctx),
        workers=workers,
        search_roots=search_root,
    )


location_app = typer.Typer(help="Storage locations: region and encryption.", no_args_is_help=True)
key_app = typer.Typer(help="Keys of client-side blob encryption.", no_args_is_help=True)
residency_app = typer.Typer(help="Regions a namespace's data may live in.", no_args_is_help=True)


@location_app.command("set")
def location_set(
    uri: str = typer.Argument(..., help="Location prefix (s3://bucket/prefix or a directory)."),
    region: str = typer.Option(..., "--region", help="Where it is, e.g. eu-west-1."),
    encryption: str = typer.Option(
        "none", "--encryption", help="none, sse-s3, sse-kms or aes-gcm (client-side)."
    ),
    kms_key_id: str | None = typer.Option(None, "--kms-key-id", help="For sse-kms."),
    key_id: str | None = typer.Option(
        None, "--key-id", help="For aes-gcm: the key provider's key that seals new blobs."
    ),
    db: str | None = RegistryOpt,
) -> None:
    """Declare a storage location's region and encryption: writes to it then carry the SSE
    headers, or are sealed by the registry with AES-GCM (keys from SHARDYARD_KEY_FILE)."""
    from registry.residency import set_location

    if kms_key_id and key_id:
        raise InvalidInput("--kms-key-id is for sse-kms, --key-id for aes-gcm: give one")
    loc = set_location(
        _engine(db), uri, region, encryption, kms_key_id or key_id, actor=_operator().actor
    )
    typer.echo(f"{loc.prefix}: {loc.region}, encryption {loc.encryption}")


@location_app.command("list")
def location_list(db: str | None = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """Declared locations."""
    from sqlalchemy import select

    from registry import schema as t

    with _engine(db).connect() as conn:
        rows = [dict(r) for r in conn.execute(select(t.locations)).mappings()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    for r in rows:
        typer.echo(f"{r['prefix']}  {r['region']}  {r['encryption']}")


@residency_app.command("set")
def residency_set(
    namespace: str = typer.Argument(..., help="Namespace (its sub-namespaces follow)."),
    region: list[str] = typer.Option([], "--region", help="An allowed region (repeatable)."),
    db: str | None = RegistryOpt,
) -> None:
    """Allow the namespace's data only in these regions (no --region: remove the policy)."""
    from registry.residency import set_residency

    set_residency(_engine(db), namespace, region, actor=_operator().actor)
    typer.echo(f"{namespace}: {', '.join(region) if region else 'no residency policy'}")


@key_app.command("create")
def key_create(
    key_id: str = typer.Argument(..., help="The new key's id (1-32 letters, digits, '-_.')."),
    key_file: Path | None = typer.Option(
        None, "--key-file", help="Default: SHARDYARD_KEY_FILE, else keys.json in the home."
    ),
) -> None:
    """Add a fresh AES-256 key to the local key file (made readable by its owner only). Point
    a location at it with `registry location set URI --encryption aes-gcm --key-id ID`; older
    keys stay in the file so that blobs sealed with them still open."""
    from registry.envelope import create_key, default_key_file

    path = key_file or default_key_file()
    create_key(path, key_id)
    typer.echo(f"key {key_id} added to {path}")
