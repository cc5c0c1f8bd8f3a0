"""``shardyard ingest``: raw corpora -> a clean, deduplicated dataset version;
``shardyard ingest explain``: why a document is (not) in it; ``shardyard tokenize``: a dataset
-> packed token rows; ``shardyard tokenizer train``: a BPE vocabulary from a dataset."""

from __future__ import annotations

import json
from typing import Any

import typer
from typer.core import TyperGroup

from datastore.cli import storage_config
from datastore.errors import InvalidInput

__all__ = ["app", "tokenize_command", "tokenizer_app"]


class _DefaultRun(TyperGroup):
    """``shardyard ingest INPUTS...`` means ``shardyard ingest run INPUTS...``; only
    ``explain`` is a sub-command of its own."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands:
            args = ["run", *args]
        return list(super().parse_args(ctx, args))


app = typer.Typer(
    cls=_DefaultRun,
    help="Ingest raw corpora (JSONL, Parquet, CSV, text; local or s3://) into a dataset.",
)

# Where and how a job runs: the same flags for every Dask job.
_SCHEDULER = typer.Option(
    None,
    "--scheduler",
    help="tcp://HOST:PORT of an existing Dask scheduler (else DASK_SCHEDULER_ADDRESS, "
    "else a LocalCluster).",
)
_WORKERS = typer.Option(
    None, "--workers", "-w", help="LocalCluster worker processes (default: one per core)."
)
_MEMORY_LIMIT = typer.Option(
    None, "--memory-limit", help="Memory per LocalCluster worker, e.g. 4GiB."
)
_WORK_DIR = typer.Option(
    None, "--work-dir", help="Where resumable task outputs go (default: OUTPUT/_work)."
)
_KEEP_WORK = typer.Option(False, "--keep-work", help="Keep the work directory.")
_JSON = typer.Option(False, "--json", help="Print the run report as JSON on stdout.")
_REGISTER = typer.Option(
    None,
    "--register",
    help="Register the output as a new version of this registry artifact ([ns/]name), with "
    "lineage to its registered inputs.",
)
_PARENT = typer.Option([], "--parent", help="Registry reference the output derives from.")
_REGISTRY = typer.Option(
    None, "--registry", help="Registry database (else SHARDYARD_REGISTRY, ~/.shardyard)."
)
_BLOBS = typer.Option(None, "--blobs", help="Registry blob store (directory or s3://).")


def _register(
    ctx: typer.Context,
    name: str | None,
    report: Any,
    inputs: list[tuple[str, int]],
    files: list[str],
    parents: list[str],
    registry: str | None,
    blobs: str | None,
    job: str,
) -> dict[str, Any] | None:
    """Register the job's output when asked (after it committed); what was registered."""
    if name is None:
        return None
    from pipelines.registration import register_output

    ref, linked = register_output(
        name,
        output=(report.output_uri, report.output_version),
        inputs=inputs,
        files=files,
        parents=parents,
        metadata={"job": job, "job_id": report.job_id},
        registry=registry,
        blobs=blobs,
        config=storage_config(ctx),
    )
    return {"ref": ref, "parents": linked}


_QUIET = typer.Option(False, "--quiet", "-q", help="No progress or summary.")


def _echo(quiet: bool, as_json: bool) -> Any:
    """Where a job's progress lines go: stderr, unless --quiet or --json."""

    def echo(msg: str) -> None:
        if not quiet and not as_json:
            typer.echo(msg, err=True)

    return echo


def execution(
    scheduler: str | None,
    workers: int | None,
    memory_limit: str | None,
    work_dir: str | None,
    keep_work: bool,
    quiet: bool,
    as_json: bool,
) -> Any:
    """The ExecutionConfig of a Dask job from the shared flags (no progress line under
    --quiet or --json)."""
    from pipelines.config import ExecutionConfig

    return ExecutionConfig(
        scheduler=scheduler,
        workers=workers,
        memory_limit=memory_limit,
        work_dir=work_dir,
        keep_work=keep_work,
        progress=not (quiet or as_json),
    )


def print_report(
    report: Any, registered: dict[str, Any] | None, as_json: bool, quiet: bool
) -> None:
    """A job's report: JSON (with what was registered) or its summary line."""
    if as_json:
        doc = report.to_dict()
        if registered is not None:
            doc["registered"] = registered
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
    elif not quiet:
        typer.echo(report.summary())
        if registered is not None:
            typer.echo(f"registered {registered['ref']}")


_SETS_HELP = (
    "Override any config key, e.g. --set filters.min_words=20 --set dedup.fuzzy.bands=16 "
    "(repeatable; applied after --config and the flags)."
)


@app.command(
    "run",
    epilog="See also: shardyard ingest explain OUTPUT DOC_ID (why a document is not in it).",
)
def run(
    ctx: typer.Context,
    inputs: list[str] = typer.Argument(
        ..., help="Input files, directories, globs or s3:// prefixes.", show_default=False
    ),
    output: str = typer.Option(
        ..., "--output", "-o", help="Output dataset URI (path or s3://); a new version is added."
    ),
    config_file: str | None = typer.Option(
        None, "--config", "-c", help="Pipeline config file (TOML or YAML)."
    ),
    input_format: str | None = typer.Option(
        None, "--format", help="Input format: jsonl, parquet, csv or text (default: by extension)."
    ),
    text_field: str | None = typer.Option(None, "--text-field", help="Field holding the text."),
    id_field: str | None = typer.Option(None, "--id-field", help="Field holding the document id."),
    no_normalize: bool = typer.Option(False, "--no-normalize", help="Skip text normalization."),
    no_filters: bool = typer.Option(False, "--no-filters", help="Skip the quality filters."),
    pii: bool = typer.Option(False, "--pii", help="Redact e-mails, IP addresses, phone numbers."),
    no_exact: bool = typer.Option(False, "--no-exact-dedup", help="Skip exact dedup."),
    no_fuzzy: bool = typer.Option(False, "--no-fuzzy-dedup", help="Skip MinHash fuzzy dedup."),
    verify_jaccard: bool = typer.Option(
        False, "--verify-jaccard", help="Check candidate pairs' true Jaccard (fewer false hits)."
    ),
    output_format: str | None = typer.Option(
        None, "--output-format", help="parquet (default) or arrow."
    ),
    max_errors: float | None = typer.Option(
        None,
        "--max-errors",
        help="Fail when more records are quarantined: a count, or a fraction below 1.",
    ),
    scheduler: str | None = _SCHEDULER,
    workers: int | None = _WORKERS,
    memory_limit: str | None = _MEMORY_LIMIT,
    work_dir: str | None = _WORK_DIR,
    keep_work: bool = _KEEP_WORK,
    sets: list[str] = typer.Option([], "--set", help=_SETS_HELP, show_default=False),
    register: str | None = _REGISTER,
    parent: list[str] = _PARENT,
    registry: str | None = _REGISTRY,
    blobs: str | None = _BLOBS,
    as_json: bool = _JSON,
    quiet: bool = _QUIET,
) -> None:
    """Ingest INPUTS into a new version of the dataset at --output.

    Stages: normalize, quality filters, PII redaction (opt-in), user stages, exact and fuzzy
    dedup, each configurable in --config. Re-running the same command after a crash resumes
    the job; bad records go to OUTPUT/_quarantine, removed documents and their reasons to
    OUTPUT/_removed.
    """
    from pipelines.config import load_config
    from pipelines.ingest import ingest

    config = load_config(config_file)
    overrides: dict[str, Any] = {}
    flag_values: dict[str, Any] = {
        "input.format": input_format,
        "input.text_field": text_field,
        "input.id_field": id_field,
        "output.format": output_format,
        "errors.max_errors": max_errors,
        "execution.scheduler": scheduler,
        "execution.workers": workers,
        "execution.memory_limit": memory_limit,
        "execution.work_dir": work_dir,
    }
    overrides.update({k: v for k, v in flag_values.items() if v is not None})
    for flag, key in (
        (no_normalize, "normalize.enabled"),
        (no_filters, "filters.enabled"),
        (no_exact, "dedup.exact.enabled"),
        (no_fuzzy, "dedup.fuzzy.enabled"),
    ):
        if flag:
            overrides[key] = False
    if pii:
        overrides["pii.enabled"] = True
    if verify_jaccard:
        overrides["dedup.fuzzy.verify_jaccard"] = True
    if keep_work:
        overrides["execution.keep_work"] = True
    if quiet or as_json:
        overrides["execution.progress"] = False
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInput(f"--set {item!r} must look like section.key=value")
        overrides[key.strip()] = _parse_value(value.strip())
    if overrides:
        config = config.with_overrides(overrides)

    def echo(msg: str) -> None:
        if not quiet and not as_json:
            typer.echo(msg, err=True)

    report = ingest(inputs, output, config, storage=storage_config(ctx), echo=echo)
    registered = _register(ctx, register, report, [], [], parent, registry, blobs, "ingest")
    print_report(report, registered, as_json, quiet)


def _parse_value(text: str) -> Any:
    """A --set value: JSON where it parses (numbers, true/false, null, tables), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@app.command("explain")
def explain_cmd(
    ctx: typer.Context,
    output: str = typer.Argument(..., help="The ingested dataset."),
    doc_id: str = typer.Argument(..., help="The document id to look for."),
    version: int | None = typer.Option(None, "--version", "-v", help="Dataset version."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Say whether DOC_ID is in the dataset and, if it was removed, why (filter and measured
    value, or duplicate of which surviving document)."""
    from pipelines.report import explain

    result = explain(output, doc_id, version, storage=storage_config(ctx))
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True, default=str))
        return
    status = result["status"]
    if status == "kept":
        typer.echo(
            f"{doc_id}: kept in {output} v{result['version']} ({result['shard']} row "
            f"{result['row']}); source {result['source_uri']} @ {result['source_offset']}"
        )
    elif status == "removed":
        value = f" (measured {result['value']:.4g})" if result.get("value") is not None else ""
        detail = f"; {result['detail']}" if result.get("detail") else ""
        typer.echo(
            f"{doc_id}: removed by {result['reason']}{value}{detail}; source "
            f"{result['source_uri']} @ {result['source_offset']}"
        )
    elif status == "multiple":
        for m in result["matches"]:
            typer.echo(f"{doc_id}: {m['status']} {m.get('reason', m.get('shard', ''))}")
    else:
        typer.echo(
            f"{doc_id}: not in {output} v{result['version']} nor among its removed documents "
            "(was it in the inputs? quarantined records have no id: see OUTPUT/_quarantine)"
        )
        raise typer.Exit(1)


# -- shardyard tokenize / shardyard tokenizer ---------------------------------------------------


def tokenize_command(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="Table dataset to tokenize (path or s3://)."),
    output: str = typer.Option(
        ..., "--output", "-o", help="Output token dataset URI; a new version is added."
    ),
    tokenizer: str = typer.Option(
        "bytes",
        "--tokenizer",
        "-t",
        help="A tokenizer.json (or a directory holding one), local or s3://; 'bytes' is the "
        "built-in byte tokenizer.",
    ),
    seq_len: int = typer.Option(2048, "--seq-len", help="Tokens per packed row."),
    packing: str = typer.Option(
        "greedy",
        "--packing",
        help="greedy: documents end to end across rows; padded: each document starts a row.",
    ),
    dtype: str = typer.Option(
        "auto", "--dtype", help="auto (uint16 when the vocabulary fits), uint16 or uint32."
    ),
    text_field: str = typer.Option("text", "--text-field", help="Column holding the text."),
    source_version: int | None = typer.Option(
        None, "--source-version", help="Source dataset version (default: latest)."
    ),
    eos_token: str | None = typer.Option(
        None, "--eos-token", help="Token ending each document (default: <|endoftext|>, </s>...)."
    ),
    pad_token: str | None = typer.Option(
        None, "--pad-token", help="Token filling rows' tails (default: <pad>... else EOS)."
    ),
    engine: str = typer.Option(
        "auto",
        "--engine",
        help="Encoder for tokenizer.json files: auto (fastokens when it matches tokenizers on "
        "probe texts, spot-checked per batch), fastokens, or tokenizers (the reference).",
    ),
    shard_rows: int | None = typer.Option(
        None, "--shard-rows", help="Rows per shard object (default: ~64 MiB)."
    ),
    chunk_rows: int | None = typer.Option(
        None, "--chunk-rows", help="Rows per inner Zarr chunk (default: ~1 MiB)."
    ),
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
    """Tokenize SOURCE's text column and pack it into fixed-length rows of a Zarr token
    dataset with per-row document boundaries. Re-running the same command after a crash
    resumes it."""
    from pipelines.tokenize import TokenizeConfig, tokenize
    from pipelines.tokenizer import TokenizerSpec

    config = TokenizeConfig(
        tokenizer=TokenizerSpec(tokenizer, eos_token=eos_token, pad_token=pad_token, engine=engine),
        text_field=text_field,
        seq_len=seq_len,
        packing=packing,  # type: ignore[arg-type]  # validated by tokenize()
        dtype=dtype,
        source_version=source_version,
        chunk_rows=chunk_rows,
        shard_rows=shard_rows,
        execution=execution(scheduler, workers, memory_limit, work_dir, keep_work, quiet, as_json),
    )
    echo = _echo(quiet, as_json)

    report = tokenize(source, output, config, storage=storage_config(ctx), echo=echo)
    registered = _register(
        ctx,
        register,
        report,
        [(report.source_uri, report.source_version)],
        [str(report.tokenizer.get("checksum", ""))],
        parent,
        registry,
        blobs,
        "tokenize",
    )
    print_report(report, registered, as_json, quiet)


tokenizer_app = typer.Typer(help="Tokenizers: train a BPE vocabulary on a dataset.")


@tokenizer_app.command("train")
def train_command(
    ctx: typer.Context,
    dataset: str = typer.Argument(..., help="Table dataset to train on (path or s3://)."),
    vocab_size: int = typer.Option(..., "--vocab-size", help="Ids in the vocabulary."),
    output: str = typer.Option(..., "--output", "-o", help="Where to write tokenizer.json."),
    text_field: str = typer.Option("text", "--text-field", help="Column holding the text."),
    version: int | None = typer.Option(None, "--version", "-v", help="Dataset version."),
    min_frequency: int = typer.Option(2, "--min-frequency", help="Rarest pair merged."),
    max_documents: int | None = typer.Option(
        None, "--max-documents", help="Train on the first N documents only."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a byte-level BPE tokenizer (lossless on any UTF-8 text; <|endoftext|> = 0,
    <|pad|> = 1) and write its tokenizer.json."""
    from pipelines.tokenizer import train_tokenizer

    result = train_tokenizer(
        dataset,
        output,
        vocab_size,
        text_field=text_field,
        version=version,
        min_frequency=min_frequency,
        max_documents=max_documents,
        storage=storage_config(ctx),
    )
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        typer.echo(
            f"trained a {result['vocab_size']:,}-id BPE tokenizer on {result['documents']:,} "
            f"documents of {result['dataset']} v{result['dataset_version']} in "
            f"{result['seconds']:.1f} s -> {result['output']} ({result['checksum'][:19]}...)"
        )
