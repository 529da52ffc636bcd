"""A template's default ``proxy_config`` (access control of its sandboxes that name none).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("templates", sa.Column("proxy_config", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("templates", "proxy_config")
