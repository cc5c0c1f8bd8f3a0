"""Tokens carry the access groups of their principal (a JSON list): the server searches
vector indexes on the token's behalf with exactly those groups, so a client cannot claim
groups it was not given.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("groups", sa.Text, nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("groups")
