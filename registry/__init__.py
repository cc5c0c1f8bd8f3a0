"""registry: versioned artifacts (datasets, tokenizers, checkpoints, models, vector indexes)
with aliases, history and lineage; metadata in SQL (SQLite file or PostgreSQL), files in a
content-addressed blob store (local directory or ``s3://``).

- :class:`Registry` (:mod:`registry.registry`): register, resolve, list, aliases, download,
  revoke.
- :mod:`registry.refs`: ``ns/name:7``, ``ns/name@alias``, ``ns/name:latest``; name checks.
- :mod:`registry.blobs`: the blob store; :mod:`registry.db`: engines and migrations;
  :mod:`registry.schema`: the tables.

Still to come (the Registry issue): GC, lineage queries and exports, releases, the
deployable policy, checkpoints, the benchmark.
"""

from registry.refs import DEFAULT_NAMESPACE, KINDS, Ref, parse_ref
from registry.registry import FileEntry, Registry, Version

__all__ = ["DEFAULT_NAMESPACE", "KINDS", "FileEntry", "Ref", "Registry", "Version", "parse_ref"]
