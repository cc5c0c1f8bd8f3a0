"""Initial registry schema: artifacts, versions, files, tags, metrics, aliases, alias events,
lineage edges. Frozen: later schema changes are new revisions, never edits here.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("namespace", sa.String(512), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("namespace", "name", name="uq_artifact"),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("artifact_id", sa.Integer, sa.ForeignKey("artifacts.id"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("dataset_uri", sa.Text, nullable=True),
        sa.Column("dataset_version", sa.Integer, nullable=True),
        sa.Column("meta", sa.Text, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("revoked_reason", sa.Text, nullable=True),
        sa.UniqueConstraint("artifact_id", "number", name="uq_version"),
    )
    op.create_table(
        "files",
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_files_sha256", "files", ["sha256"])
    op.create_table(
        "tags",
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("key", sa.String(256), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_index("ix_tags_key_value", "tags", ["key", "value"])
    op.create_table(
        "metrics",
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("key", sa.String(256), primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_table(
        "aliases",
        sa.Column("artifact_id", sa.Integer, sa.ForeignKey("artifacts.id"), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "alias_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("artifact_id", sa.Integer, sa.ForeignKey("artifacts.id"), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
    )
    op.create_index("ix_alias_events", "alias_events", ["artifact_id", "alias", "at"])
    op.create_table(
        "edges",
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("child_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("relation", sa.String(64), nullable=False),
    )
    op.create_index("ix_edges_child", "edges", ["child_id"])


def downgrade() -> None:
    for table in (
        "edges",
        "alias_events",
        "aliases",
        "metrics",
        "tags",
        "files",
        "versions",
        "artifacts",
    ):
        op.drop_table(table)
