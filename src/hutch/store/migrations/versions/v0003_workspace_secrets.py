"""Workspace secrets: sealed values that egress header rules name (``hutch secrets``); a
sandbox's ``proxy_config`` as answers show it (no secret values).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "workspace_secrets",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("workspace_id", sa.String(64), sa.ForeignKey("workspaces.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("sealed", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("workspace_id", "name"),
    )
    op.add_column("sandboxes", sa.Column("proxy_config", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("sandboxes", "proxy_config")
    op.drop_table("workspace_secrets")
