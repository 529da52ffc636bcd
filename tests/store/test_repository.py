"""Sandbox records change status by compare-and-set, on SQLite and PostgreSQL: of two writers
that find a sandbox in the same status, exactly one moves it; every edge the transition table
lacks is refused before the database is touched."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from sqlalchemy import text, update

from hutch.domain import (
    TRANSITIONS,
    IllegalTransition,
    SandboxGone,
    SandboxRepository,
    SandboxStatus,
    WrongState,
)
from hutch.store import Database, Sandbox, Workspace

pytestmark = pytest.mark.asyncio(loop_scope="session")

S = SandboxStatus
_ids = itertools.count()


async def _sandbox(db: Database, status: SandboxStatus) -> str:
    """A sandbox record in ``status`` (in workspace ``w``, made on first use); returns its id."""
    async with db.session() as s, s.begin():
        if await s.get(Workspace, "w") is None:
            s.add(Workspace(id="w", name="w"))
    sandbox_id = f"sb{next(_ids)}"
    async with db.session() as s, s.begin():
        s.add(Sandbox(id=sandbox_id, workspace_id="w", name=sandbox_id, image="i", status=status))
    return sandbox_id


async def _status(db: Database, sandbox_id: str) -> str | None:
    row = await SandboxRepository(db).get(sandbox_id)
    return None if row is None else row.status


async def test_transition_writes_status_and_values_when_expected(db: Database) -> None:
    """A transition from the status the record has writes the new status, the given values and
    a fresh ``updated_at`` (which it returns)."""
    repo = SandboxRepository(db)
    sandbox_id = await _sandbox(db, S.READY)
    written = await repo.transition(sandbox_id, S.STOPPED, expected={S.READY}, status_message="m")
    row = await repo.require(sandbox_id)
    assert (row.status, row.status_message, row.updated_at) == ("stopped", "m", written)


async def test_transition_from_another_status_names_the_current_one(db: Database) -> None:
    """A record not in any expected status is left as it is, and the error says which status
    it has and which was needed; a record that is gone raises SandboxGone."""
    repo = SandboxRepository(db)
    sandbox_id = await _sandbox(db, S.STOPPED)
    with pytest.raises(WrongState) as caught:
        await repo.transition(sandbox_id, S.STOPPED, expected={S.READY})
    assert (caught.value.current, caught.value.expected) == ("stopped", "ready")
    assert str(caught.value) == f"Sandbox '{sandbox_id}' is stopped; this needs it ready"
    assert await _status(db, sandbox_id) == "stopped"
    with pytest.raises(SandboxGone):
        await repo.transition("nope", S.STOPPED, expected={S.READY})


async def test_every_edge_outside_the_table_is_refused(db: Database) -> None:
    """For every pair of statuses: an edge in the table moves a record in its first status; an
    edge not in it raises IllegalTransition and leaves the record untouched."""
    repo = SandboxRepository(db)
    refused = set()
    for frm, to in itertools.product(SandboxStatus, repeat=2):
        sandbox_id = await _sandbox(db, frm)
        if to in TRANSITIONS[frm]:
            await repo.transition(sandbox_id, to, expected={frm})
            assert await _status(db, sandbox_id) == to
        else:
            refused.add((frm, to))
            with pytest.raises(IllegalTransition):
                await repo.transition(sandbox_id, to, expected={frm})
            assert await _status(db, sandbox_id) == frm
    # No status goes to itself or back to provisioning; deleting goes nowhere; failed only to
    # deleting.
    assert refused == {(s, s) for s in SandboxStatus} | {
        (S.PROVISIONING, S.STOPPED),
        (S.READY, S.PROVISIONING),
        (S.STOPPED, S.PROVISIONING),
        (S.FAILED, S.PROVISIONING),
        (S.FAILED, S.READY),
        (S.FAILED, S.STOPPED),
        (S.DELETING, S.PROVISIONING),
        (S.DELETING, S.READY),
        (S.DELETING, S.STOPPED),
        (S.DELETING, S.FAILED),
    }
    # A set of expected statuses is refused if any one of its edges is.
    with pytest.raises(IllegalTransition):
        await repo.transition("any", S.READY, expected={S.STOPPED, S.FAILED})


async def test_status_goes_through_transition_only(db: Database) -> None:
    """``update`` and ``insert`` refuse to write a status other than a new record's."""
    repo = SandboxRepository(db)
    sandbox_id = await _sandbox(db, S.READY)
    with pytest.raises(ValueError, match="transition"):
        await repo.update(sandbox_id, status="stopped")
    with pytest.raises(ValueError, match="provisioning"):
        await repo.insert(Sandbox(id="x", workspace_id="w", name="x", image="i", status="ready"))
    assert await _status(db, sandbox_id) == "ready"


@pytest.mark.parametrize(
    ("first", "second"),
    [(S.STOPPED, S.STOPPED), (S.STOPPED, S.DELETING), (S.FAILED, S.STOPPED)],
)
async def test_two_writers_from_the_same_status_exactly_one_wins(
    database_url: str, db: Database, first: SandboxStatus, second: SandboxStatus
) -> None:
    """Two servers (each its own engine on one database) race to move the same ready sandbox:
    in each of 20 rounds exactly one wins and the other gets WrongState naming the winner's
    status, which is the one stored."""
    other = Database(database_url)
    try:
        mine, theirs = SandboxRepository(db), SandboxRepository(other)
        for _ in range(20):
            sandbox_id = await _sandbox(db, S.READY)
            results = await asyncio.gather(
                mine.transition(sandbox_id, first, expected={S.READY}),
                theirs.transition(sandbox_id, second, expected={S.READY}),
                return_exceptions=True,
            )
            lost = [r for r in results if isinstance(r, BaseException)]
            assert len(lost) == 1, results
            assert isinstance(lost[0], WrongState), lost
            winner = second if isinstance(results[0], BaseException) else first
            assert lost[0].current == winner
            assert await _status(db, sandbox_id) == winner
    finally:
        await other.aclose()


async def test_a_writer_waiting_on_the_row_sees_the_committed_status(postgres_url: str) -> None:
    """On PostgreSQL, a transition that has to wait for another transaction's lock on the row
    checks the status that transaction committed, not the one it first found: it loses."""
    db, other = Database(postgres_url), Database(postgres_url)
    try:
        await db.migrate()
        sandbox_id = await _sandbox(db, S.READY)
        async with other.session() as s, s.begin():
            await s.execute(
                update(Sandbox).where(Sandbox.id == sandbox_id).values(status=S.DELETING.value)
            )
            task = asyncio.create_task(
                SandboxRepository(db).transition(sandbox_id, S.STOPPED, expected={S.READY})
            )
            for _ in range(500):  # until the transition waits for this transaction's row lock
                waiting = await s.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                )
                if waiting.scalar_one() or task.done():
                    break
                await asyncio.sleep(0.01)
            assert not task.done()
        with pytest.raises(WrongState) as caught:
            await task
        assert caught.value.current == "deleting"
        assert await _status(db, sandbox_id) == "deleting"
    finally:
        await db.aclose()
        await other.aclose()
