"""Alembic's environment: migrations run on the connection ``hutch.store.migrations.upgrade``
hands over (in ``config.attributes``), never from a URL of their own, so the caller's lock and
transaction cover them."""

from __future__ import annotations

from alembic import context

from hutch.store._models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
