"""Blob garbage collection: ``blob_claims`` (a registration's claim on the blobs it is about to
upload or reuse) and ``gc_marks`` (GC's intent to delete a blob); see :mod:`registry.gc`.
Frozen: later schema changes are new revisions, never edits here.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blob_claims",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("claimed_at", sa.Float, nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
    )
    op.create_index("ix_blob_claims_sha256", "blob_claims", ["sha256"])
    op.create_index("ix_blob_claims_holder", "blob_claims", ["holder"])
    op.create_table(
        "gc_marks",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("marked_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("gc_marks")
    op.drop_index("ix_blob_claims_holder", table_name="blob_claims")
    op.drop_index("ix_blob_claims_sha256", table_name="blob_claims")
    op.drop_table("blob_claims")
