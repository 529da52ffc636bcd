"""The store migration that adds ``network`` to templates and sandboxes (no root needed)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hutch.store import Database

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _columns(db_file: Path, table: str) -> set[str]:
    with sqlite3.connect(db_file) as db:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


async def test_existing_rows_become_none_and_the_migration_is_idempotent(tmp_path: Path) -> None:
    """A database from before the column gets it, with "none" for rows already there (they were
    loopback-only); migrating a database that has it changes nothing."""
    db_file = tmp_path / "hutch.db"
    db = Database.in_dir(tmp_path)
    await db.migrate()
    await db.aclose()
    assert "network" in _columns(db_file, "templates")
    with sqlite3.connect(db_file) as conn:  # back to the schema of before: no column, version 1
        conn.execute(
            "INSERT INTO workspaces (id, name, created_at) VALUES ('w', 'w', '2024-01-01')"
        )
        conn.execute(
            "INSERT INTO templates (id, workspace_id, name, image, cpu, memory, network, "
            "created_at, updated_at) VALUES ('t', 'w', 'old', 'img', '1', '1Gi', 'x', "
            "'2024-01-01', '2024-01-01')"
        )
        for table in ("templates", "sandboxes"):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN network")
        conn.execute("DELETE FROM schema_version WHERE version > 1")
    assert "network" not in _columns(db_file, "templates")
    for _ in range(2):
        db = Database.in_dir(tmp_path)
        await db.migrate()
        await db.aclose()
    assert "network" in _columns(db_file, "templates") and "network" in _columns(
        db_file, "sandboxes"
    )
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("SELECT network FROM templates WHERE id = 't'").fetchall() == [
            ("none",)
        ]
