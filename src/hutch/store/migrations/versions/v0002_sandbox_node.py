"""Sandboxes record the node (server) that runs them, so that each server's start-up
reconciliation and reaper touch only their own when several share one database.

Rows from before have none; the first server to start claims them (one server was all there
was).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("sandboxes", sa.Column("node", sa.String(128), nullable=True))
    op.create_index("ix_sandboxes_node", "sandboxes", ["node"])


def downgrade() -> None:
    op.drop_index("ix_sandboxes_node", table_name="sandboxes")
    op.drop_column("sandboxes", "node")
