"""The store behaves the same on SQLite and PostgreSQL: case-insensitive search with literal
wildcards, server-side boolean and string defaults, byte counts past 2 GiB, naive UTC times."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import insert, select

from hutch.store import Database, Sandbox, Snapshot, Workspace, contains_ci, utcnow

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _workspace(db: Database) -> None:
    async with db.session() as s, s.begin():
        s.add(Workspace(id="w", name="w"))


async def test_contains_ci_matches_any_case_and_treats_wildcards_literally(db: Database) -> None:
    """``contains_ci`` finds "Py" in "MyPython" whatever the case, and "%" / "_" / "\\" in the
    needle match only themselves."""
    await _workspace(db)
    names = ["MyPython", "other", "50%_off", "back\\slash", "50xxoff"]
    async with db.session() as s, s.begin():
        for i, name in enumerate(names):
            s.add(Snapshot(id=f"s{i}", workspace_id="w", name=name, status="ready", image="i"))

    async def find(needle: str) -> set[str]:
        async with db.session() as s:
            rows = await s.execute(select(Snapshot.name).where(contains_ci(Snapshot.name, needle)))
            return {name for (name,) in rows}

    assert await find("pYTH") == {"MyPython"}
    assert await find("%_") == {"50%_off"}
    assert await find("0_") == set()
    assert await find("k\\s") == {"back\\slash"}
    assert await find("") == set(names)


async def test_server_defaults_fill_rows_written_without_them(db: Database) -> None:
    """A row inserted without ``network`` or ``persistent`` (as by an older server) reads back
    as network "none", persistent True."""
    await _workspace(db)
    now = utcnow()
    async with db.session() as s, s.begin():
        await s.execute(
            insert(Sandbox.__table__).values(  # type: ignore[arg-type]
                id="x",
                workspace_id="w",
                name="x",
                image="i",
                status="ready",
                created_at=now,
                updated_at=now,
                last_active_at=now,
            )
        )
    async with db.session() as s:
        sandbox = (await s.execute(select(Sandbox))).scalar_one()
    assert (sandbox.network, sandbox.persistent) == ("none", True)


async def test_byte_counts_past_32_bits_and_naive_utc_times_round_trip(db: Database) -> None:
    """Memory and disk sizes of several GiB are stored exactly, and naive UTC datetimes come
    back equal (and naive) so deadline arithmetic works the same on both databases."""
    await _workspace(db)
    created = datetime(2026, 1, 2, 3, 4, 5, 678000)
    async with db.session() as s, s.begin():
        s.add(
            Sandbox(
                id="big",
                workspace_id="w",
                name="big",
                image="i",
                status="ready",
                memory_bytes=64 << 30,
                fs_capacity_bytes=5 << 40,
                created_at=created,
                persistent=False,
            )
        )
    async with db.session() as s:
        sandbox = (await s.execute(select(Sandbox))).scalar_one()
        later = await s.execute(
            select(Sandbox.id).where(Sandbox.created_at < created + timedelta(seconds=1))
        )
    assert (sandbox.memory_bytes, sandbox.fs_capacity_bytes) == (64 << 30, 5 << 40)
    assert sandbox.created_at == created and sandbox.created_at.tzinfo is None
    assert sandbox.persistent is False
    assert later.all() == [("big",)]
