"""Database engine, sessions and schema migrations.

SQLite (aiosqlite) in the data directory is the embedded default; any SQLAlchemy async URL
(``postgresql+asyncpg://…``) works for several replicas. Migrations are an ordered list of steps,
each applied once and recorded in ``schema_version``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect, select, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from hutch.store._models import Base, SchemaVersion


async def _v1_initial(conn: AsyncConnection) -> None:
    await conn.run_sync(Base.metadata.create_all)


async def _add_network_columns(conn: AsyncConnection) -> None:
    """``network`` of templates and sandboxes; rows made before it were loopback-only.

    Self-contained and idempotent (a database made by ``_v1_initial`` from the current models
    already has the columns), so its place in the list can change when migrations are merged.
    """

    def existing(sync_conn: Any, table: str) -> set[str]:
        return {c["name"] for c in inspect(sync_conn).get_columns(table)}

    for table in ("templates", "sandboxes"):
        if "network" not in await conn.run_sync(existing, table):
            await conn.execute(
                text(f"ALTER TABLE {table} ADD COLUMN network VARCHAR(16) NOT NULL DEFAULT 'none'")
            )


MIGRATIONS: list[Callable[[AsyncConnection], Awaitable[None]]] = [
    _v1_initial,
    _add_network_columns,
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
