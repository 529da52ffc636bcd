"""Sessions of commands that survive a server restart: taken over with their recent output, let
go of (not killed) when the server shuts down, and their options kept with the command."""

from __future__ import annotations

import json
import time

from hutch.runtime._interface import Process
from hutch.runtime._local import LocalProcess
from hutch.sessions import Exit, Recovered, SessionManager, SessionOptions, keep_text
from hutch.sessions._kept import recovered
from tests.sessions.conftest import (
    NO_LIMITS,
    alive,
    assert_contiguous,
    collect,
    eventually,
    session_manager,
    text,
)


class _Detachable(LocalProcess):
    """A local process that, like a kept one, can be let go of without ending it."""

    detached = False

    async def detach(self) -> None:
        self.detached = True


async def test_a_taken_over_session_replays_its_history_then_goes_on() -> None:
    """Offsets continue from the restored history: a client resuming inside it gets the rest of
    the history, then the process's new output, byte for byte; older offsets start where the
    history does."""
    process = await LocalProcess.spawn(["/bin/sh", "-c", "printf tail; printf e >&2; exit 4"])

    async def load(history: int) -> list[Recovered]:
        assert history > 1024 * 1024
        return [Recovered("c1", process, NO_LIMITS, {"stdout": (100, b"x" * 50)})]

    async with session_manager() as manager:
        await manager.recover("box", load)
        await manager.recover("box", load)  # once per owner
        session = manager.get("box", "c1")
        with session.attach(stdout_offset=120) as sub:
            outputs, terminal = await collect(sub)
        assert text(outputs) == "x" * 30 + "tail" and text(outputs, "stderr") == "e"
        assert_contiguous(outputs, start=120)
        assert terminal == Exit(4)
        with session.attach() as sub:
            outputs, _ = await collect(sub)
        assert_contiguous(outputs, start=100)
        assert session.retained_from == (100, 0)


async def test_shutdown_lets_go_of_a_command_that_survives_a_restart() -> None:
    """aclose detaches (does not kill) a process that can outlive the server, even one to be
    killed when its client disconnects, and still kills one that cannot outlive it."""
    keeps = await _Detachable.spawn(["sleep", "30"])
    ends = await LocalProcess.spawn(["sleep", "30"])

    async def spawn_keeps() -> Process:
        return keeps

    async def spawn_ends() -> Process:
        return ends

    on_disconnect = SessionOptions(
        timeout=None, idle_timeout=None, ttl=None, kill_on_disconnect=True
    )
    try:
        async with session_manager() as manager:
            # Even attached with kill_on_disconnect: the server going is no client's disconnect.
            kept, _ = await manager.start("box", spawn_keeps, on_disconnect, command_id="keeps")
            kept.attach()
            await manager.start("box", spawn_ends, NO_LIMITS, command_id="ends")
        assert keeps.detached and alive(keeps.pid)
        await eventually(lambda: not alive(ends.pid))
    finally:
        await keeps.kill()
        await keeps.wait()


def test_options_are_kept_with_the_command_and_the_timeout_counts_from_its_start() -> None:
    """The kept text gives back the command id and options; the timeout left is what remains
    since the command started, never below zero."""
    options = SessionOptions(timeout=60, idle_timeout=5, ttl=7, kill_on_disconnect=True)
    kept = keep_text("c1", options)
    back = recovered(kept, None, {"stdout": (3, b"abc")})  # type: ignore[arg-type]
    assert back.command_id == "c1" and back.history == {"stdout": (3, b"abc")}
    assert back.options.timeout is not None and 59 < back.options.timeout <= 60
    assert (back.options.idle_timeout, back.options.ttl, back.options.kill_on_disconnect) == (
        5,
        7,
        True,
    )
    old = json.loads(kept)
    old["started"] = time.time() - 3600
    assert recovered(json.dumps(old), None, {}).options.timeout == 0  # type: ignore[arg-type]


def test_history_fits_the_log_whatever_its_capacity() -> None:
    """The history a taken-over session restores never exceeds what its log keeps, and is never
    negative for the smallest log."""
    assert SessionManager(log_capacity=4096).history_bytes == 0
    big = SessionManager()
    assert 14 * 1024 * 1024 < big.history_bytes < 15 * 1024 * 1024
