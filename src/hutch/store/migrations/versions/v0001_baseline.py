"""Baseline: the schema of the last hand-rolled migration step (frozen in ``_baseline``).

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

from alembic import op

from hutch.store.migrations._baseline import baseline_metadata

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    baseline_metadata().create_all(op.get_bind())


def downgrade() -> None:
    baseline_metadata().drop_all(op.get_bind())
