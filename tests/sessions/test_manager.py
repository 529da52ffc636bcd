"""The session manager: get-or-create by id, owners, TTL expiry, limits, shutdown."""

from __future__ import annotations

import asyncio
import re

import pytest

from hutch.runtime._interface import Process
from hutch.sessions import (
    CommandNotFound,
    Exit,
    FakeClock,
    SessionExpired,
    SessionOptions,
    SessionState,
    ShuttingDown,
    TooManySessions,
)
from tests.sessions.conftest import (
    DEADLINE,
    NO_LIMITS,
    alive,
    collect,
    eventually,
    session_manager,
    sh,
)


class CountingSpawn:
    """A spawn callable that counts its calls and yields to the loop before spawning."""

    def __init__(self, command: str) -> None:
        self.calls = 0
        self._spawn = sh(command)

    async def __call__(self) -> Process:
        self.calls += 1
        await asyncio.sleep(0)  # let concurrent starts interleave
        return await self._spawn()


async def test_same_command_id_returns_the_existing_session_without_spawning() -> None:
    """A second start with a known id attaches to the same session (created=False)."""
    spawn = CountingSpawn("sleep 100")
    async with session_manager() as mgr:
        first, created = await mgr.start("sb", spawn, NO_LIMITS, command_id="c1")
        again, created_again = await mgr.start("sb", spawn, NO_LIMITS, command_id="c1")
        assert created and not created_again
        assert again is first and spawn.calls == 1


async def test_concurrent_starts_with_one_id_spawn_once() -> None:
    """Racing starts with the same id spawn one process and share its session."""
    spawn = CountingSpawn("sleep 100")
    async with session_manager() as mgr:
        results = await asyncio.gather(
            *(mgr.start("sb", spawn, NO_LIMITS, command_id="same") for _ in range(5))
        )
        assert spawn.calls == 1
        assert len({id(session) for session, _ in results}) == 1
        assert sorted(created for _, created in results) == [False] * 4 + [True]


async def test_owners_are_separate_namespaces() -> None:
    """Another owner's command id is unknown to an owner, and may be reused by it."""
    async with session_manager() as mgr:
        mine, _ = await mgr.start("sb-a", sh("sleep 100"), NO_LIMITS, command_id="x")
        with pytest.raises(CommandNotFound, match=r"Command not found: x"):
            mgr.get("sb-b", "x")
        theirs, created = await mgr.start("sb-b", sh("sleep 100"), NO_LIMITS, command_id="x")
        assert created and theirs is not mine
        assert mgr.get("sb-a", "x") is mine and mgr.list("sb-b") == [theirs]


async def test_generated_ids_are_32_hex_digits() -> None:
    """Without a command id the manager makes a unique 32-hex one."""
    async with session_manager() as mgr:
        a, _ = await mgr.start("sb", sh("true"), NO_LIMITS)
        b, _ = await mgr.start("sb", sh("true"), NO_LIMITS)
        assert re.fullmatch("[0-9a-f]{32}", a.command_id) and a.command_id != b.command_id


async def test_ttl_expiry_answers_session_expired_and_unknown_ids_not_found() -> None:
    """After ``ttl`` a finished session is SessionExpired; never-seen ids are CommandNotFound."""
    clock = FakeClock()
    async with session_manager(clock=clock) as mgr:
        options = SessionOptions(timeout=None, idle_timeout=None, ttl=10)
        session, _ = await mgr.start("sb", sh("echo hi"), options, command_id="done")
        with session.attach() as sub:
            _, terminal = await collect(sub)
        assert terminal == Exit(0)
        assert clock.advance(9.9) == 0
        assert mgr.get("sb", "done") is session
        clock.advance(0.2)
        assert session.state is SessionState.EXPIRED
        with pytest.raises(SessionExpired, match=r"^Session expired: done$"):
            mgr.get("sb", "done")
        with pytest.raises(SessionExpired):
            session.attach()
        with pytest.raises(SessionExpired):  # no second run of an expired command
            await mgr.start("sb", sh("echo hi"), options, command_id="done")
        with pytest.raises(CommandNotFound, match=r"^Command not found: never$"):
            mgr.get("sb", "never")
        async with asyncio.timeout(DEADLINE):
            await session.wait_closed()


async def test_ttl_waits_for_an_attached_client_to_finish() -> None:
    """A session whose TTL passes while a client still reads expires when that client leaves."""
    clock = FakeClock()
    async with session_manager(clock=clock) as mgr:
        options = SessionOptions(timeout=None, idle_timeout=None, ttl=1)
        session, _ = await mgr.start("sb", sh("echo hi"), options, command_id="c")
        await session.wait()
        sub = session.attach()
        clock.advance(5)
        assert mgr.get("sb", "c") is session
        sub.close()
        with pytest.raises(SessionExpired):
            mgr.get("sb", "c")


async def test_running_commands_per_owner_are_capped() -> None:
    """Past the per-owner limit start raises TooManySessions; other owners are unaffected."""
    async with session_manager(max_running_per_owner=2) as mgr:
        for _ in range(2):
            await mgr.start("sb", sh("sleep 100"), NO_LIMITS)
        with pytest.raises(TooManySessions) as caught:
            await mgr.start("sb", sh("sleep 100"), NO_LIMITS)
        assert caught.value.limit == 2 and "sb" in str(caught.value)
        await mgr.start("other", sh("sleep 100"), NO_LIMITS)


async def test_finished_sessions_per_owner_are_capped() -> None:
    """Past the finished-session limit the oldest finished session expires early."""
    async with session_manager(max_finished_per_owner=1) as mgr:
        first, _ = await mgr.start("sb", sh("true"), NO_LIMITS, command_id="first")
        await first.wait()
        second, _ = await mgr.start("sb", sh("true"), NO_LIMITS, command_id="second")
        await second.wait()
        await mgr.start("sb", sh("true"), NO_LIMITS, command_id="third")
        with pytest.raises(SessionExpired):
            mgr.get("sb", "first")
        assert mgr.get("sb", "second") is second


async def test_close_owner_kills_and_forgets_its_sessions() -> None:
    """Deleting a sandbox kills its commands; their ids are then unknown."""
    async with session_manager() as mgr:
        session, _ = await mgr.start("sb", sh("sleep 100"), NO_LIMITS, command_id="c")
        other, _ = await mgr.start("keep", sh("sleep 100"), NO_LIMITS, command_id="c")
        with session.attach() as sub:
            await mgr.close_owner("sb")
            _, terminal = await collect(sub)
        assert terminal == Exit(137) and not alive(session.pid)
        assert session.state is SessionState.EXPIRED
        with pytest.raises(CommandNotFound):
            mgr.get("sb", "c")
        assert mgr.get("keep", "c") is other and other.running


async def test_aclose_kills_everything_and_refuses_new_starts() -> None:
    """Shutting the manager down kills every command and waits for their tasks."""
    async with session_manager() as mgr:
        sessions = [(await mgr.start(f"sb{i}", sh("sleep 100"), NO_LIMITS))[0] for i in range(3)]
        await mgr.aclose()
        assert all(s.closed and s.exit_code == 137 for s in sessions)
        assert not any(alive(s.pid) for s in sessions)
        with pytest.raises(ShuttingDown):
            await mgr.start("sb", sh("true"), NO_LIMITS)


async def test_log_budget_forgets_the_earliest_finished_sessions_of_any_owner() -> None:
    """Past the server-wide log budget, sessions that finished first (any owner) are forgotten;
    running sessions are kept."""
    big = "head -c 100000 /dev/zero"
    async with session_manager(log_budget=250_000) as mgr:
        running, _ = await mgr.start("r", sh(f"{big}; sleep 100"), NO_LIMITS, command_id="run")
        await eventually(lambda: running.log_bytes >= 100_000)
        first, _ = await mgr.start("a", sh(big), NO_LIMITS, command_id="first")
        await eventually(lambda: first.terminal is not None)
        assert mgr.get("a", "first") is first  # 200 kB held: within the budget
        second, _ = await mgr.start("b", sh(big), NO_LIMITS, command_id="second")
        await eventually(lambda: second.terminal is not None)
        await mgr.start("c", sh("true"), NO_LIMITS)  # a start checks the budget too
        with pytest.raises(SessionExpired):
            mgr.get("a", "first")
        assert mgr.get("b", "second") is second
        assert mgr.get("r", "run") is running and running.running
        assert mgr.log_bytes <= 250_000
