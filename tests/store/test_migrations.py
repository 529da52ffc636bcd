"""Schema migrations: a database from before a column existed gains it, and migrating twice
changes nothing."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, text

from hutch.store import Database
from hutch.store._db import MIGRATIONS


async def _columns(db: Database, table: str) -> set[str]:
    async with db.engine.connect() as conn:
        return await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns(table)})


async def test_old_database_gains_the_lifecycle_columns(tmp_path: Path) -> None:
    """A v1 database without stopped_at / delete_after_stop_seconds gets both from migration 2."""
    db = Database.in_dir(tmp_path)
    try:
        await db.migrate()
        async with db.engine.begin() as conn:  # make it look like a database of version 1
            for column in ("stopped_at", "delete_after_stop_seconds"):
                await conn.execute(text(f"ALTER TABLE sandboxes DROP COLUMN {column}"))
            await conn.execute(text("DELETE FROM schema_version WHERE version > 1"))
        assert "stopped_at" not in await _columns(db, "sandboxes")
        await db.migrate()
        assert {"stopped_at", "delete_after_stop_seconds"} <= await _columns(db, "sandboxes")
        await db.migrate()  # nothing left to do
        async with db.engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version FROM schema_version"))).all()
        assert sorted(v for (v,) in versions) == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await db.aclose()
