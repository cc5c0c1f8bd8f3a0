"""Registering a pipeline's output in the registry, with lineage found from its inputs.

``shardyard ingest ... --register NS/NAME`` and ``shardyard tokenize ... --register NS/NAME``
add a registry version pointing at the dataset version the job committed. Its parents are the
references given with ``--parent`` plus every registered version that points at one of the
job's input dataset versions or holds its tokenizer file (matched by sha256), so lineage is
recorded without naming it twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from datastore import StorageConfig

__all__ = ["register_output"]


def register_output(
    name: str,
    *,
    output: tuple[str, int],
    inputs: Iterable[tuple[str, int]] = (),
    files: Iterable[str] = (),
    parents: Iterable[str] = (),
    metadata: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    registry: str | None = None,
    blobs: str | None = None,
    config: StorageConfig | None = None,
) -> tuple[str, list[str]]:
    """Register ``output`` (dataset URI, version) as a new version of ``name`` (kind
    dataset); ``inputs`` are input dataset versions and ``files`` sha256 checksums (e.g. a
    tokenizer's) to link from when they are registered. Returns (the new reference, its
    parents)."""
    from registry.registry import Registry

    reg = Registry(registry, blobs, config=config)
    try:
        found = [str(p) for p in parents]
        for uri, number in inputs:
            found += [str(v.ref) for v in reg.find(dataset=(uri, number))]
        for checksum in files:
            digest = checksum.split(":", 1)[-1]
            found += [str(v.ref) for v in reg.find(sha256=digest)]
        unique = list(dict.fromkeys(found))
        again = _same_as_newest(reg, name, output)
        if again is not None:  # a rerun of the job that registered it: no duplicate version
            return again, unique
        new = reg.register(
            name,
            kind="dataset",
            dataset=output,
            parents=unique,
            metadata=metadata,
            tags=tags,
        )
        return str(new.ref), unique
    finally:
        reg.close()


def _same_as_newest(reg: Any, name: str, output: tuple[str, int]) -> str | None:
    """The reference of ``name``'s newest version when it already points at ``output``."""
    from datastore.errors import NotFound

    try:
        newest = reg.versions(name, limit=1)
    except NotFound:
        return None
    if newest and newest[0].dataset_uri is not None:
        same = reg.find(dataset=output, name=name, limit=1)
        if same and same[0].number == newest[0].number:
            return str(newest[0].ref)
    return None


def register_index(
    name: str,
    report: Any,
    *,
    parents: Iterable[str] = (),
    registry: str | None = None,
    blobs: str | None = None,
    config: StorageConfig | None = None,
) -> tuple[str, list[str]]:
    """Register an embed job's table version (``report``: an EmbedReport) as a
    ``vector-index`` version of ``name`` pinned to that table version, with lineage to the
    registered source dataset version and the registered embedding model (matched by the
    sha256 of its weights file); the table version is tagged so cleanup keeps it."""
    from pipelines.embedder import resolve_model, weights_sha256
    from pipelines.vectors import open_db, split_table_uri
    from registry.registry import Registry

    reg = Registry(registry, blobs, config=config)
    try:
        found = [str(p) for p in parents]
        found += [str(v.ref) for v in reg.find(dataset=(report.source_uri, report.source_version))]
        weights = weights_sha256(resolve_model(report.model))
        if weights is not None:
            found += [str(v.ref) for v in reg.find(sha256=weights)]
        unique = list(dict.fromkeys(found))
        output = (report.table_uri, report.table_version)
        again = _same_as_newest(reg, name, output)
        if again is not None:
            return again, unique
        ref = split_table_uri(report.table_uri)
        table = open_db(ref.db, config).open_table(ref.name)
        tag = f"pin-v{report.table_version}"
        if tag not in table.tags.list():
            table.tags.create(tag, report.table_version)
        new = reg.register(
            name,
            kind="vector-index",
            dataset=output,
            parents=unique,
            metadata={
                "job": "embed",
                "job_id": report.job_id,
                "model": report.model,
                "model_digest": report.model_digest,
                "model_weights_sha256": weights,
                "dim": report.dim,
                "chunks": report.chunks_total,
                "index": report.index,
                "table_tag": tag,
            },
        )
        return str(new.ref), unique
    finally:
        reg.close()
