"""The registry's SQL schema (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Tables and why they look the way they do:

* ``artifacts``: one row per ``namespace/name`` with its kind.
* ``versions``: immutable versions, ``number`` counting up per artifact (unique together, so
  two writers cannot both take a number: the loser retries), the content ``digest`` over its
  files, an optional dataset pointer, free metadata (JSON), and ``revoked_at``.
* ``files``: what a version holds: path inside the version, sha256 and size of the blob.
* ``tags`` / ``metrics``: key-value pairs per version (metrics as floats, for thresholds).
* ``aliases``: where each alias points now; ``alias_events``: every move, for history
  ("what was in production on date D").
* ``edges``: lineage between versions.
* ``blob_claims`` / ``gc_marks``: the garbage collector's handshake with registrations (a
  registration's claim on the blobs it is about to upload or reuse; GC's intent to delete a
  blob): see :mod:`registry.gc`.
* ``tokens``: API tokens of the server (only a sha256 of each secret), scoped to a namespace
  with a role, expiring and revocable: see :mod:`registry.tokens`.
* ``audit``: the append-only, hash-chained record of who did what: see :mod:`registry.audit`.
* ``holds``: legal holds on a version or a whole artifact (released, never deleted);
  ``deletions``: versions whose files were deleted (the version row stays, for audit).
* ``locations``: storage locations (URI prefixes) with their region and encryption mode;
  ``residency``: the regions a namespace's data may live in: see :mod:`registry.residency`.
* ``declassifications``: an admin's recorded release of a derived version from a restricted
  ancestor's access rule (restrictions otherwise follow lineage: see ``Registry.restrictions``).

Times are UNIX seconds (float) so that both backends order and compare them alike.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "alias_events",
    "aliases",
    "artifacts",
    "audit",
    "blob_claims",
    "declassifications",
    "deletions",
    "edges",
    "files",
    "gc_marks",
    "holds",
    "locations",
    "metadata",
    "metrics",
    "residency",
    "settings",
    "tags",
    "tokens",
    "versions",
]

metadata = MetaData()

artifacts = Table(
    "artifacts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("namespace", String(512), nullable=False),
    Column("name", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("namespace", "name", name="uq_artifact"),
)

versions = Table(
    "versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("artifact_id", Integer, ForeignKey("artifacts.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("digest", String(80), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(256), nullable=False, default=""),
    Column("dataset_uri", Text, nullable=True),
    Column("dataset_version", Integer, nullable=True),
    Column("meta", Text, nullable=False, default="{}"),
    Column("revoked_at", Float, nullable=True),
    Column("revoked_reason", Text, nullable=True),
    UniqueConstraint("artifact_id", "number", name="uq_version"),
)

files = Table(
    "files",
    metadata,
    Column("version_id", Integer, ForeignKey("versions.id"), primary_key=True),
    Column("path", String(1024), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Index("ix_files_sha256", "sha256"),
)

tags = Table(
    "tags",
    metadata,
    Column("version_id", Integer, ForeignKey("versions.id"), primary_key=True),
    Column("key", String(256), primary_key=True),
    Column("value", Text, nullable=False),
    Index("ix_tags_key_value", "key", "value"),
)

metrics = Table(
    "metrics",
    metadata,
    Column("version_id", Integer, ForeignKey("versions.id"), primary_key=True),
    Column("key", String(256), primary_key=True),
    Column("value", Float, nullable=False),
)

aliases = Table(
    "aliases",
    metadata,
    Column("artifact_id", Integer, ForeignKey("artifacts.id"), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=False),
    Column("updated_at", Float, nullable=False),
)

alias_events = Table(
    "alias_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("artifact_id", Integer, ForeignKey("artifacts.id"), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=True),  # None: removed
    Column("at", Float, nullable=False),
    Column("actor", String(256), nullable=False, default=""),
    Index("ix_alias_events", "artifact_id", "alias", "at"),
)

edges = Table(
    "edges",
    metadata,
    Column("parent_id", Integer, ForeignKey("versions.id"), primary_key=True),
    Column("child_id", Integer, ForeignKey("versions.id"), primary_key=True),
    Column("relation", String(64), nullable=False, default="derived"),
    Index("ix_edges_child", "child_id"),
)

blob_claims = Table(
    "blob_claims",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sha256", String(64), nullable=False),
    Column("claimed_at", Float, nullable=False),
    Column("holder", String(64), nullable=False),
    Index("ix_blob_claims_sha256", "sha256"),
    Index("ix_blob_claims_holder", "holder"),
)

gc_marks = Table(
    "gc_marks",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("marked_at", Float, nullable=False),
)

settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# -- governance: API tokens and the audit trail (migration 0004) ---------------------------

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("namespace", String(512), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
    Column("note", Text, nullable=False, default=""),
    Column("groups", Text, nullable=False, server_default="[]"),  # JSON list: access groups
)

audit = Table(
    "audit",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", Float, nullable=False),
    Column("actor", String(256), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(1024), nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_at", "at"),
    Index("ix_audit_actor", "actor"),
    Index("ix_audit_target", "target"),
)

holds = Table(
    "holds",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("artifact_id", Integer, ForeignKey("artifacts.id"), nullable=False),
    Column("version_id", Integer, ForeignKey("versions.id"), nullable=True),  # None: all
    Column("reason", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("released_at", Float, nullable=True),
    Index("ix_holds_artifact", "artifact_id"),
)

deletions = Table(
    "deletions",
    metadata,
    Column("version_id", Integer, ForeignKey("versions.id"), primary_key=True),
    Column("deleted_at", Float, nullable=False),
    Column("deleted_by", String(256), nullable=False),
    Column("reason", Text, nullable=False),
)

locations = Table(
    "locations",
    metadata,
    Column("prefix", String(1024), primary_key=True),  # canonical URI prefix
    Column("region", String(64), nullable=False),
    Column("encryption", String(32), nullable=False),  # none | sse-s3 | sse-kms | aes-gcm
    Column("kms_key_id", String(512), nullable=True),
)

residency = Table(
    "residency",
    metadata,
    Column("namespace", String(512), primary_key=True),
    Column("regions", Text, nullable=False),  # JSON list of allowed regions
)

declassifications = Table(
    "declassifications",
    metadata,
    Column("child_id", Integer, ForeignKey("versions.id"), primary_key=True),
    Column("ancestor_id", Integer, ForeignKey("versions.id"), primary_key=True),
    Column("at", Float, nullable=False),
    Column("by", String(256), nullable=False),
    Column("reason", Text, nullable=False),
)
