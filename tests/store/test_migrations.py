"""Schema migrations: a fresh database gets exactly the models' schema; databases made by the
pre-Alembic migrator are taken over with their rows; concurrent migrations wait for each other."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect, select, text

from hutch.store import Base, Database, Sandbox, Template, Workspace
from hutch.store.migrations import head
from hutch.store.migrations._baseline import baseline_metadata

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: What the old migrator's first step (``create_all`` of the models of then) made on SQLite:
#: no quotas, no network mode, no lifecycle/snapshot columns, no snapshot or registry tables.
V1_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL, PRIMARY KEY (version));
CREATE TABLE workspaces (
    id VARCHAR(64) NOT NULL, name VARCHAR(128) NOT NULL, created_at DATETIME NOT NULL,
    PRIMARY KEY (id), UNIQUE (name));
CREATE TABLE api_keys (
    id VARCHAR(64) NOT NULL, key_hash VARCHAR(64) NOT NULL, workspace_id VARCHAR(64) NOT NULL,
    name VARCHAR(128) NOT NULL, is_admin BOOLEAN NOT NULL, created_at DATETIME NOT NULL,
    PRIMARY KEY (id), UNIQUE (key_hash), FOREIGN KEY(workspace_id) REFERENCES workspaces (id));
CREATE TABLE templates (
    id VARCHAR(64) NOT NULL, workspace_id VARCHAR(64) NOT NULL, name VARCHAR(63) NOT NULL,
    image TEXT NOT NULL, cpu VARCHAR(32) NOT NULL, memory VARCHAR(32) NOT NULL,
    storage VARCHAR(32), created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL,
    PRIMARY KEY (id), UNIQUE (workspace_id, name),
    FOREIGN KEY(workspace_id) REFERENCES workspaces (id));
CREATE TABLE sandboxes (
    id VARCHAR(64) NOT NULL, workspace_id VARCHAR(64) NOT NULL, name VARCHAR(63) NOT NULL,
    template_id VARCHAR(64), template_name VARCHAR(63), image TEXT NOT NULL,
    cpu_millis INTEGER, memory_bytes INTEGER, status VARCHAR(32) NOT NULL, status_message TEXT,
    ttl_seconds INTEGER, idle_ttl_seconds INTEGER, created_at DATETIME NOT NULL,
    updated_at DATETIME NOT NULL, last_active_at DATETIME NOT NULL,
    PRIMARY KEY (id), UNIQUE (workspace_id, name),
    FOREIGN KEY(workspace_id) REFERENCES workspaces (id));
INSERT INTO schema_version VALUES (1);
INSERT INTO workspaces VALUES ('w1', 'default', '2024-01-01 00:00:00');
INSERT INTO api_keys VALUES ('k1', 'hash', 'w1', 'admin', 1, '2024-01-01 00:00:00');
INSERT INTO templates VALUES ('t1', 'w1', 'old', 'local/busybox', '500m', '256Mi', NULL,
    '2024-01-01 00:00:00', '2024-01-01 00:00:00');
INSERT INTO sandboxes VALUES ('s1', 'w1', 'keep-me', 't1', 'old', 'local/busybox', 500,
    268435456, 'ready', NULL, 3600, NULL, '2024-01-01 00:00:00', '2024-01-01 00:00:00',
    '2024-01-01 00:00:00');
"""


def _diffs(conn: Connection) -> list[Any]:
    return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


async def test_a_fresh_database_gets_exactly_the_models_schema(db: Database) -> None:
    """Migrating an empty database leaves no difference from the models (tables, columns,
    types, nullability, server defaults, constraints, indexes) and records the newest revision."""
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_diffs) == []
        versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    assert [v for (v,) in versions] == [head()]


async def test_migrating_again_changes_nothing(db: Database) -> None:
    """A second migrate of an up-to-date database is a no-op (rows and revision stay)."""
    async with db.session() as session, session.begin():
        session.add(Workspace(id="w", name="w"))
    await db.migrate()
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_diffs) == []
        assert "schema_version" not in await conn.run_sync(_tables)
        assert (await conn.execute(text("SELECT id FROM workspaces"))).all() == [("w",)]


async def test_concurrent_migrations_wait_for_each_other(database_url: str) -> None:
    """Two servers migrating one empty database at once both succeed, one revision recorded
    (without the lock the second would create tables the first is creating)."""
    dbs = [Database(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(d.migrate() for d in dbs))
        async with dbs[0].engine.connect() as conn:
            assert await conn.run_sync(_diffs) == []
            rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert rows == [(head(),)]
    finally:
        for d in dbs:
            await d.aclose()


async def test_a_first_version_sqlite_database_is_upgraded_with_its_rows(tmp_path: Path) -> None:
    """A database the old migrator left at its first step gains every later column and table;
    its rows stay, with the old defaults (network "none", persistent); then Alembic owns it."""
    with sqlite3.connect(tmp_path / "hutch.db") as conn:
        conn.executescript(V1_SCHEMA)
    for _ in range(2):  # the second run finds nothing to do
        db = Database.in_dir(tmp_path)
        try:
            await db.migrate()
            async with db.session() as session:
                sandbox = (await session.execute(select(Sandbox))).scalar_one()
                template = (await session.execute(select(Template))).scalar_one()
            async with db.engine.connect() as conn:
                tables = await conn.run_sync(_tables)
                diffs = await conn.run_sync(_diffs)
                versions = (await conn.execute(text("SELECT * FROM alembic_version"))).all()
        finally:
            await db.aclose()
        assert (sandbox.name, sandbox.memory_bytes, sandbox.ttl_seconds) == (
            "keep-me",
            268435456,
            3600,
        )
        assert (sandbox.network, sandbox.persistent, sandbox.stopped_at) == ("none", True, None)
        assert template.network == "none"
        assert {"snapshots", "snapshot_tags", "registries"} <= tables
        assert "schema_version" not in tables
        assert versions == [(head(),)]
        # Columns the old ALTERs added carry their old spelling of a type; none is missing.
        assert [d for d in diffs if d[0] in ("add_table", "add_column", "remove_column")] == []


async def test_an_up_to_date_old_database_is_only_stamped(tmp_path: Path) -> None:
    """A database that went through every old step keeps its rows and is stamped at the
    baseline, then upgraded like any other (schema_version → alembic_version)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'hutch.db'}")
    baseline_metadata().create_all(engine)  # every old step's schema: the baseline
    engine.dispose()
    with sqlite3.connect(tmp_path / "hutch.db") as conn:  # as the old migrator left it
        conn.executescript(
            "CREATE TABLE schema_version (version INTEGER NOT NULL, PRIMARY KEY (version));"
            "INSERT INTO schema_version VALUES (1),(2),(3),(4),(5),(6),(7),(8);"
            "INSERT INTO workspaces (id, name, created_at) VALUES ('w', 'w', '2024-01-01');"
        )
    db = Database.in_dir(tmp_path)
    try:
        await db.migrate()
        async with db.engine.connect() as conn:
            assert await conn.run_sync(_diffs) == []
            assert (await conn.execute(text("SELECT id FROM workspaces"))).all() == [("w",)]
            assert "schema_version" not in await conn.run_sync(_tables)
    finally:
        await db.aclose()
