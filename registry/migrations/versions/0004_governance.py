"""Governance: API tokens (hashed secrets, namespace scope, role, expiry, revocation), the
hash-chained audit trail, legal holds and deletions, storage locations and residency,
declassifications.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("namespace", sa.String(512), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("note", sa.Text, nullable=False),
    )
    op.create_table(
        "audit",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(1024), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_index("ix_audit_actor", "audit", ["actor"])
    op.create_index("ix_audit_target", "audit", ["target"])
    op.create_table(
        "holds",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("artifact_id", sa.Integer, sa.ForeignKey("artifacts.id"), nullable=False),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("released_at", sa.Float, nullable=True),
    )
    op.create_index("ix_holds_artifact", "holds", ["artifact_id"])
    op.create_table(
        "deletions",
        sa.Column("version_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("deleted_at", sa.Float, nullable=False),
        sa.Column("deleted_by", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_table(
        "locations",
        sa.Column("prefix", sa.String(1024), primary_key=True),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("encryption", sa.String(32), nullable=False),
        sa.Column("kms_key_id", sa.String(512), nullable=True),
    )
    op.create_table(
        "residency",
        sa.Column("namespace", sa.String(512), primary_key=True),
        sa.Column("regions", sa.Text, nullable=False),
    )
    op.create_table(
        "declassifications",
        sa.Column("child_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("ancestor_id", sa.Integer, sa.ForeignKey("versions.id"), primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("by", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("declassifications")
    op.drop_table("residency")
    op.drop_table("locations")
    op.drop_table("deletions")
    op.drop_table("holds")
    op.drop_table("audit")
    op.drop_table("tokens")
