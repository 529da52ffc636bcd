"""Database engine, sessions and schema migrations.

SQLite (aiosqlite) in the data directory is the embedded default; ``postgresql+asyncpg://…``
serves several replicas. Migrations are Alembic revisions (``hutch.store.migrations``), run under
a lock so that servers starting together migrate one at a time: PostgreSQL's advisory lock, or
an flock on a file next to the SQLite database.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import ColumnElement, event, func, make_url, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import QueryableAttribute

from hutch.store import migrations

#: ``pg_advisory_xact_lock`` key of schema migrations (any constant; "hutch" in ASCII).
_PG_MIGRATION_LOCK = 0x6875746368


def contains_ci(
    column: ColumnElement[str] | QueryableAttribute[str], text: str
) -> ColumnElement[bool]:
    """``column`` contains ``text``, case-insensitively (LIKE wildcards in ``text`` are literal)."""
    needle = text.lower().replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")
    return func.lower(column).like(f"%{needle}%", escape="\\")


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
        """Bring the schema to the newest revision; concurrent callers wait for each other."""
        async with self._sqlite_migration_lock(), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Held to the end of this transaction, which on PostgreSQL holds the DDL too.
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                )
            await conn.run_sync(migrations.upgrade)

    @asynccontextmanager
    async def _sqlite_migration_lock(self) -> AsyncIterator[None]:
        """An flock on ``<database>.migrate-lock`` (SQLite runs DDL outside transactions, so
        its own locks cannot cover a whole migration); nothing for other databases."""
        url = make_url(self.url)
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            yield
            return
        fd = os.open(f"{url.database}.migrate-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    async def aclose(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()
