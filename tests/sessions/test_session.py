"""Command sessions over real host processes: streaming, replay, backpressure, timers, kill."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from hutch.runtime._local import LocalProcess
from hutch.sessions import (
    Error,
    Exit,
    FakeClock,
    InvalidSessionState,
    SessionOptions,
    SessionState,
    SlowConsumer,
    StdinClosed,
)
from tests.conftest import TIME_SCALE
from tests.sessions.conftest import (
    DEADLINE,
    NO_LIMITS,
    alive,
    assert_contiguous,
    collect,
    eventually,
    py,
    session_id,
    session_manager,
    sh,
    text,
)

OWNER = "sb-1"


async def test_streams_in_order_with_per_stream_offsets() -> None:
    """Each stream arrives in order with offsets counted separately from 0."""
    async with session_manager() as mgr:
        cmd = "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 3"
        session, created = await mgr.start(OWNER, sh(cmd), NO_LIMITS)
        assert created and len(session.command_id) == 32
        with session.attach() as sub:
            outputs, terminal = await collect(sub)
        assert terminal == Exit(3)
        assert text(outputs) == "out1\nout2\nout3\n"
        assert text(outputs, "stderr") == "err1\nerr2\nerr3\n"
        assert_contiguous(outputs, stream="stdout")
        assert_contiguous(outputs, stream="stderr")
        assert (session.stdout_bytes, session.stderr_bytes) == (15, 15)
        assert session.state is SessionState.EXITED and session.exit_code == 3


async def test_multibyte_characters_written_byte_by_byte_are_never_split() -> None:
    """``ü€😀`` written one byte at a time arrives as whole characters with exact offsets."""
    octal = "".join(f"printf '\\{b:03o}'; sleep 0.01; " for b in "ü€😀".encode())
    async with session_manager() as mgr:
        session, _ = await mgr.start(OWNER, sh(octal), NO_LIMITS)
        with session.attach() as sub:
            outputs, terminal = await collect(sub)
    assert terminal == Exit(0)
    assert text(outputs) == "ü€😀"
    assert all("?" not in o.data for o in outputs)
    assert_contiguous(outputs)


async def test_invalid_utf8_keeps_offsets_exact() -> None:
    """Invalid bytes become one ``?`` each, so offsets still count real bytes."""
    async with session_manager() as mgr:
        cmd = r"printf '\377ab\303(\342\202'; printf 'x\200' >&2"
        session, _ = await mgr.start(OWNER, sh(cmd), NO_LIMITS)
        with session.attach() as sub:
            outputs, _ = await collect(sub)
        assert text(outputs) == "?ab?(??"
        assert text(outputs, "stderr") == "x?"
        assert session.stdout_bytes == len(text(outputs).encode()) == 7
        with session.attach(stdout_offset=4) as sub:
            tail, _ = await collect(sub)
        assert text(tail) == "(??"
        assert_contiguous(tail, start=4)


async def test_reattach_after_exit_from_offsets_never_duplicates() -> None:
    """Replay from mid-chunk (mid-character too) and beyond the end sends no byte twice."""
    async with session_manager() as mgr:
        session, _ = await mgr.start(OWNER, sh("printf 'hello wörld\\n'; echo err >&2"), NO_LIMITS)
        await session.wait()
        with session.attach(stdout_offset=7) as sub:
            outputs, terminal = await collect(sub)
        assert text(outputs) == "örld\n" and text(outputs, "stderr") == "err\n"
        assert terminal == Exit(0)
        with session.attach(stdout_offset=8, stderr_offset=1) as sub:
            outputs, _ = await collect(sub)
        # Starting inside "ö" (bytes 7-8): its second byte alone is one "?".
        assert sorted((o.stream, o.offset, o.data) for o in outputs) == [
            ("stderr", 1, "rr\n"),
            ("stdout", 8, "?rld\n"),
        ]
        with session.attach(stdout_offset=1000, stderr_offset=1000) as sub:
            outputs, terminal = await collect(sub)
        assert outputs == [] and terminal == Exit(0)


async def test_reattach_mid_stream_continues_where_the_client_left() -> None:
    """A client that left after ``abc`` re-attaches at offset 3 and gets only what followed."""
    async with session_manager() as mgr:
        session, _ = await mgr.start(OWNER, sh("printf abc; read x; printf def"), NO_LIMITS)
        with session.attach() as sub:
            first = await anext(sub)
        assert (first.stream, first.offset, first.data) == ("stdout", 0, "abc")  # type: ignore[union-attr]
        await session.write_stdin(b"go\n")
        with session.attach(stdout_offset=3) as sub:
            outputs, terminal = await collect(sub)
        assert [(o.offset, o.data) for o in outputs] == [(3, "def")]
        assert terminal == Exit(0)


async def test_attach_after_exit_replays_everything_then_exit() -> None:
    """A first attach after the command finished gets all output, then the exit."""
    async with session_manager() as mgr:
        session, _ = await mgr.start(OWNER, sh("echo one; echo two >&2; exit 7"), NO_LIMITS)
        assert await session.wait() == 7
        with session.attach() as sub:
            outputs, terminal = await collect(sub)
        assert text(outputs) == "one\n" and text(outputs, "stderr") == "two\n"
        assert terminal == Exit(7)


async def test_two_subscribers_both_get_everything_in_the_same_order() -> None:
    """Concurrent subscribers each receive all output, in the same arrival order."""
    async with session_manager() as mgr:
        cmd = "for i in $(seq 1 200); do echo out$i; echo err$i >&2; done"
        session, _ = await mgr.start(OWNER, sh(cmd), NO_LIMITS)
        with session.attach() as a, session.attach() as b:
            (out_a, end_a), (out_b, end_b) = await asyncio.gather(collect(a), collect(b))
        assert end_a == end_b == Exit(0)
        expected = "".join(f"out{i}\n" for i in range(1, 201))
        assert text(out_a) == text(out_b) == expected
        # Both read the one log: the same events in the same arrival order across streams.
        assert out_a == out_b


PAYLOAD_UNIT = "0123456789abcdef ü€😀\n"
PAYLOAD_REPEAT = (1 << 20) // len(PAYLOAD_UNIT.encode()) + 1
PAYLOAD = (PAYLOAD_UNIT * PAYLOAD_REPEAT).encode()
WRITE_PAYLOAD = (
    f"import sys; sys.stdout.buffer.write(({PAYLOAD_UNIT!r} * {PAYLOAD_REPEAT}).encode())"
)


async def test_backpressure_blocks_the_writer_and_loses_nothing() -> None:
    """With a 4 KiB log and no subscriber, 1 MiB blocks the writer; then arrives intact."""
    async with session_manager(log_capacity=4096) as mgr:
        session, _ = await mgr.start(OWNER, py(WRITE_PAYLOAD), NO_LIMITS)
        await eventually(lambda: session.paused)
        # Paused: only the pipe (64 KiB) and the reader's buffer (2 x 64 KiB) can hold more,
        # far less than 1 MiB, so the writer cannot have finished.
        assert session.exit_code is None and alive(session.pid)
        assert session.stdout_bytes < 4096
        with session.attach() as sub:
            outputs, terminal = await collect(sub)
        assert terminal == Exit(0)
        received = text(outputs).encode()
        assert len(received) == len(PAYLOAD) > 1 << 20
        assert hashlib.sha256(received).digest() == hashlib.sha256(PAYLOAD).digest()
        assert_contiguous(outputs)
        assert max(len(o.data.encode()) for o in outputs) <= 4096


async def test_slow_subscriber_is_dropped_while_a_fast_one_gets_everything() -> None:
    """A stalled subscriber raises SlowConsumer; the fast one is not held back and loses nothing."""
    async with session_manager(log_capacity=16 * 1024) as mgr:
        session, _ = await mgr.start(OWNER, py(WRITE_PAYLOAD), NO_LIMITS)
        with session.attach() as fast, session.attach() as slow:
            await anext(slow)  # then stalls
            outputs, terminal = await collect(fast)
            assert terminal == Exit(0)
            assert hashlib.sha256(text(outputs).encode()).digest() == (
                hashlib.sha256(PAYLOAD).digest()
            )
            with pytest.raises(SlowConsumer) as caught:
                await anext(slow)
            assert caught.value.stdout_offset > 0
            assert slow.closed and session.subscribers == 0


async def test_delivered_history_is_dropped_and_late_replay_starts_at_oldest_byte() -> None:
    """Past the bound, delivered output is dropped; a re-attach at 0 starts at the oldest byte."""
    async with session_manager(log_capacity=16 * 1024) as mgr:
        cmd = "for i in $(seq 1 20000); do echo line$i; done"
        session, _ = await mgr.start(OWNER, sh(cmd), NO_LIMITS)
        with session.attach() as sub:
            everything, _ = await collect(sub)
        full = text(everything).encode()
        assert len(full) == session.stdout_bytes > 16 * 1024
        oldest = session.retained_from[0]
        assert oldest > 0
        with session.attach(stdout_offset=0) as sub:
            replay, terminal = await collect(sub)
        assert terminal == Exit(0)
        assert replay[0].offset == oldest
        assert text(replay).encode() == full[oldest:]
        assert len(full) - oldest <= 16 * 1024


@pytest.mark.root
async def test_timeout_kills_the_tree_and_reports_command_timeout() -> None:
    """After ``timeout`` the tree is dead and subscribers get Error(CommandTimeout)."""
    clock = FakeClock()
    async with session_manager(clock=clock) as mgr:
        options = SessionOptions(timeout=2, idle_timeout=None, ttl=None)
        session, _ = await mgr.start(OWNER, sh("sleep 100 & echo $!; sleep 100"), options)
        with session.attach() as sub:
            first = await anext(sub)
            child = int(first.data)  # type: ignore[union-attr]
            assert alive(child)
            assert clock.advance(2) == 1
            outputs, terminal = await collect(sub)
        assert terminal == Error("CommandTimeout", "Command timed out after 2 seconds")
        assert session.exit_code == 137 and session.timed_out
        assert not alive(child) and not alive(session.pid)
        with session.attach() as sub:  # a reconnect replays, then the same error
            outputs, again = await collect(sub)
        assert text(outputs) == f"{child}\n" and again == terminal


async def test_idle_timeout_kills_a_command_nobody_attached_to() -> None:
    """With no subscriber for ``idle_timeout`` the command is killed (FakeClock, no sleeping)."""
    clock = FakeClock()
    async with session_manager(clock=clock) as mgr:
        options = SessionOptions(timeout=None, idle_timeout=5, ttl=None)
        session, _ = await mgr.start(OWNER, sh("sleep 100"), options)
        assert clock.advance(4.9) == 0
        assert session.running
        assert clock.advance(0.2) == 1
        async with asyncio.timeout(DEADLINE):
            assert await session.wait() == 137


async def test_attaching_cancels_the_idle_timer_and_detaching_restarts_it() -> None:
    """The idle timer stops while a client is attached and restarts when the last one leaves."""
    clock = FakeClock()
    async with session_manager(clock=clock) as mgr:
        options = SessionOptions(timeout=None, idle_timeout=5, ttl=None)
        session, _ = await mgr.start(OWNER, sh("sleep 100"), options)
        clock.advance(3)
        with session.attach(), session.attach():
            assert clock.advance(100) == 0
        assert session.running
        assert clock.advance(4.9) == 0
        assert clock.advance(0.1) == 1
        async with asyncio.timeout(DEADLINE):
            assert await session.wait() == 137


async def test_kill_on_disconnect_kills_when_the_last_client_leaves() -> None:
    """With ``kill_on_disconnect`` the command dies as soon as the last subscriber detaches."""
    async with session_manager() as mgr:
        options = SessionOptions(timeout=None, idle_timeout=None, kill_on_disconnect=True)
        session, _ = await mgr.start(OWNER, sh("sleep 100"), options)
        first, second = session.attach(), session.attach()
        first.close()
        assert session.running
        second.close()
        async with asyncio.timeout(DEADLINE):
            assert await session.wait() == 137


async def test_kill_reports_exit_137_to_subscribers() -> None:
    """``kill()`` kills the command; attached subscribers then get Exit(137)."""
    async with session_manager() as mgr:
        session, _ = await mgr.start(OWNER, sh("echo started; sleep 100"), NO_LIMITS)
        with session.attach() as sub:
            assert (await anext(sub)).data == "started\n"  # type: ignore[union-attr]
            await session.kill()
            outputs, terminal = await collect(sub)
        assert outputs == [] and terminal == Exit(137)
        await session.kill()  # killing a finished command is a no-op


@pytest.mark.root
async def test_kill_reaches_children_that_called_setsid() -> None:
    """A child in its own session (``setsid``) dies with the command (freezer cgroup)."""
    escape = "import os, time; os.setsid(); time.sleep(100)"
    async with session_manager() as mgr:
        cmd = f"python3 -c '{escape}' & echo $!; sleep 100"
        session, _ = await mgr.start(OWNER, sh(cmd), NO_LIMITS)
        with session.attach() as sub:
            child = int((await anext(sub)).data)  # type: ignore[union-attr]
            await eventually(lambda: alive(child) and session_id(child) == child)
            assert session_id(child) != session_id(session.pid)
            await session.kill()
            _, terminal = await collect(sub)
        assert terminal == Exit(137)
        assert not alive(child)


async def test_stdin_reaches_the_command() -> None:
    """Input written to stdin is read by the command (``read x; echo got:$x``)."""
    async with session_manager() as mgr:
        session, _ = await mgr.start(OWNER, sh("read x; echo got:$x"), NO_LIMITS)
        await session.write_stdin(b"world\n")
        with session.attach() as sub:
            outputs, terminal = await collect(sub)
        assert text(outputs) == "got:world\n" and terminal == Exit(0)
        with pytest.raises(InvalidSessionState) as caught:
            await session.write_stdin(b"late\n")
        assert caught.value.current is SessionState.EXITED
        assert "exited" in str(caught.value) and "running" in str(caught.value)


async def test_close_stdin_gives_eof_and_later_writes_fail() -> None:
    """After close_stdin, ``cat`` sees EOF and exits; writing then raises StdinClosed."""
    async with session_manager() as mgr:
        session, _ = await mgr.start(OWNER, sh("cat"), NO_LIMITS)
        await session.write_stdin(b"abc")
        await session.close_stdin()
        await session.close_stdin()  # idempotent
        with pytest.raises(StdinClosed):
            await session.write_stdin(b"more")
        with session.attach() as sub:
            outputs, terminal = await collect(sub)
        assert text(outputs) == "abc" and terminal == Exit(0)


async def test_illegal_calls_name_the_current_and_expected_state() -> None:
    """Resizing a finished command raises an error naming both states; pipes ignore resize."""
    async with session_manager() as mgr:
        session, _ = await mgr.start(OWNER, sh("read x"), NO_LIMITS)
        session.resize(24, 80)  # pipes: no terminal, nothing to do
        await session.close_stdin()
        await session.wait()
        with pytest.raises(InvalidSessionState) as caught:
            session.resize(24, 80)
        assert caught.value.expected == (SessionState.RUNNING,)
        assert str(caught.value) == (
            "Cannot resize the terminal: the command is exited, expected running"
        )


async def test_local_process_reports_signals_as_128_plus_n() -> None:
    """LocalProcess.wait answers 128+N for a process killed by signal N."""
    proc = await LocalProcess.spawn(["/bin/sh", "-c", "kill -TERM $$"])
    try:
        async with asyncio.timeout(DEADLINE):
            assert await proc.wait() == 128 + 15
    finally:
        await proc.close()


async def test_background_children_holding_the_pipes_do_not_delay_the_exit() -> None:
    """Once the command exits, a quiet pipe held open by a background child ends the stream."""
    async with session_manager() as mgr:
        session, _ = await mgr.start(OWNER, sh("sleep 30 & echo hi"), NO_LIMITS)
        with session.attach() as sub:
            async with asyncio.timeout(5 * TIME_SCALE):  # far below the child's 30 s
                outputs, terminal = await collect(sub)
        assert text(outputs) == "hi\n" and terminal == Exit(0)


class ResizableProcess(LocalProcess):
    """A host process that also has a terminal size, like a PTY process."""

    sizes: list[tuple[int, int]]

    def resize(self, rows: int, cols: int) -> None:
        self.sizes = [*getattr(self, "sizes", []), (rows, cols)]


async def test_resize_reaches_a_process_with_a_terminal() -> None:
    """``resize`` calls the process's hook when it has one."""
    process: ResizableProcess | None = None

    async def spawn() -> ResizableProcess:
        nonlocal process
        process = await ResizableProcess.spawn(["/bin/sh", "-c", "sleep 100"])
        return process

    async with session_manager() as mgr:
        session, _ = await mgr.start(OWNER, spawn, NO_LIMITS)
        session.resize(40, 120)
        assert process is not None and process.sizes == [(40, 120)]
        with pytest.raises(ValueError):
            session.resize(0, 80)


async def test_closing_a_subscription_ends_a_pending_iteration() -> None:
    """A consumer waiting for output stops when its subscription is closed elsewhere."""
    async with session_manager() as mgr:
        session, _ = await mgr.start(OWNER, sh("sleep 100"), NO_LIMITS)
        sub = session.attach()
        waiting = asyncio.create_task(anext(sub))
        await asyncio.sleep(0)  # one loop turn: the consumer runs until it waits for output
        sub.close()
        async with asyncio.timeout(DEADLINE):
            with pytest.raises(StopAsyncIteration):
                await waiting
        assert session.running and session.subscribers == 0


async def test_without_the_freezer_kill_signals_the_process_group() -> None:
    """Without a cgroup, kill reaches the command's process group (background children too)."""
    async with session_manager() as mgr:
        spawn = sh("sleep 100 & echo $!; sleep 100", use_cgroup=False)
        session, _ = await mgr.start(OWNER, spawn, NO_LIMITS)
        with session.attach() as sub:
            child = int((await anext(sub)).data)  # type: ignore[union-attr]
            await session.kill()
            _, terminal = await collect(sub)
        assert terminal == Exit(137)
        await eventually(lambda: not alive(child))
