"""Database engine, sessions and schema migrations.

SQLite (aiosqlite) in the data directory is the embedded default; any SQLAlchemy async URL
(``postgresql+asyncpg://…``) works for several replicas. Migrations are an ordered list of steps,
each applied once and recorded in ``schema_version``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import ColumnElement, event, func, inspect, select, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import QueryableAttribute

from hutch.store._models import Base, SchemaVersion

Step = Callable[[AsyncConnection], Awaitable[None]]


def contains_ci(
    column: ColumnElement[str] | QueryableAttribute[str], text: str
) -> ColumnElement[bool]:
    """``column`` contains ``text``, case-insensitively (LIKE wildcards in ``text`` are literal)."""
    needle = text.lower().replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")
    return func.lower(column).like(f"%{needle}%", escape="\\")


async def _v1_initial(conn: AsyncConnection) -> None:
    await conn.run_sync(Base.metadata.create_all)


async def _create_missing_tables(conn: AsyncConnection) -> None:
    await conn.run_sync(lambda c: Base.metadata.create_all(c, checkfirst=True))


def _add_columns(table: str, columns: dict[str, str]) -> Step:
    """A step adding ``columns`` (name → SQL type) that ``table`` lacks.

    A database made by :func:`_v1_initial` after the column joined the models has it already.
    """

    async def step(conn: AsyncConnection) -> None:
        have = await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns(table)})
        for name, sql_type in columns.items():
            if name not in have:
                await conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))

    return step


MIGRATIONS: list[Step] = [
    _v1_initial,
    # Start/stop and stop-anchored deletion.
    _add_columns("sandboxes", {"stopped_at": "TIMESTAMP", "delete_after_stop_seconds": "INTEGER"}),
    # Workspace quotas.
    _add_columns(
        "workspaces",
        {"max_sandboxes": "INTEGER", "max_cpu_millis": "INTEGER", "max_memory_bytes": "INTEGER"},
    ),
    # Network mode; rows made before it were loopback-only.
    _add_columns("templates", {"network": "VARCHAR(16) NOT NULL DEFAULT 'none'"}),
    _add_columns("sandboxes", {"network": "VARCHAR(16) NOT NULL DEFAULT 'none'"}),
    # Snapshots, tags, registries (new tables), and what sandboxes keep of them.
    _create_missing_tables,
    _add_columns(
        "sandboxes",
        {
            "snapshot_id": "VARCHAR(64)",
            "run_config": "TEXT",
            "labels": "TEXT",
            "fs_capacity_bytes": "BIGINT",
        },
    ),
    # Non-persistent sandboxes; rows made before it kept their files.
    _add_columns("sandboxes", {"persistent": "BOOLEAN NOT NULL DEFAULT 1"}),
]


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url)
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.session: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )

    @classmethod
    def in_dir(cls, data_dir: Path) -> Database:
        return cls(f"sqlite+aiosqlite:///{data_dir / 'hutch.db'}")

    async def migrate(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(SchemaVersion.__table__.create, checkfirst=True)  # type: ignore[attr-defined]
            done = {v for (v,) in (await conn.execute(select(SchemaVersion.version))).all()}
            for number, step in enumerate(MIGRATIONS, start=1):
                if number not in done:
                    await step(conn)
                    await conn.execute(SchemaVersion.__table__.insert().values(version=number))  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()
