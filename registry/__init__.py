"""registry: versioned artifacts (datasets, tokenizers, checkpoints, models, vector indexes)
with aliases, history and lineage; metadata in SQL (SQLite file or PostgreSQL), files in a
content-addressed blob store (local directory or ``s3://``).

- :class:`Registry` (:mod:`registry.registry`): register, resolve, list, aliases, download,
  revoke.
- :mod:`registry.refs`: ``ns/name:7``, ``ns/name@alias``, ``ns/name:latest``; name checks.
- :mod:`registry.blobs`: the blob store; :mod:`registry.db`: engines and migrations;
  :mod:`registry.schema`: the tables.

- :mod:`registry.lineage` (walks, tree / DOT / OpenLineage), :mod:`registry.policy`
  (deployability), :mod:`registry.gc` (blob GC, safe against crashes and concurrent
  registrations), :mod:`registry.checkpoints` (PyTorch and DCP checkpoints).

Still to come (the Registry issue): the benchmark against MLflow.
"""

from typing import Any

from registry.refs import DEFAULT_NAMESPACE, KINDS, Ref, parse_ref

__all__ = ["DEFAULT_NAMESPACE", "KINDS", "FileEntry", "Ref", "Registry", "Version", "parse_ref"]


def __getattr__(name: str) -> Any:
    # SQLAlchemy only when the registry is used (the CLI starts without it otherwise)
    if name in ("Registry", "Version", "FileEntry"):
        from registry import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'registry' has no attribute {name!r}")
