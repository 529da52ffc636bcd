"""The store suite runs on both databases hutch supports: SQLite in a temp dir, and a fresh
database of a throwaway PostgreSQL cluster (``postgres_cluster`` in ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hutch.store import Database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'hutch.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A migrated database of each kind, closed afterwards."""
    database = Database(database_url)
    try:
        await database.migrate()
        yield database
    finally:
        await database.aclose()
