"""Helpers for session tests: real host processes (``LocalProcess``), bounded waits."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from hutch.runtime._interface import Process
from hutch.runtime._local import LocalProcess
from hutch.sessions import (
    Error,
    Exit,
    Output,
    SessionManager,
    SessionOptions,
    Subscription,
    Terminal,
)
from tests.conftest import TIME_SCALE

#: Bound on any single wait in these tests (scaled for slow machines).
DEADLINE = 10 * TIME_SCALE
#: Options for commands that must not be killed by a timer unless a test says so.
NO_LIMITS = SessionOptions(timeout=None, idle_timeout=None, ttl=None)


def sh(command: str, **kwargs: Any) -> Callable[[], Awaitable[Process]]:
    """A spawn callable running ``command`` with ``/bin/sh -c``."""

    async def spawn() -> Process:
        return await LocalProcess.spawn(["/bin/sh", "-c", command], **kwargs)

    return spawn


def py(code: str) -> Callable[[], Awaitable[Process]]:
    """A spawn callable running Python ``code``."""

    async def spawn() -> Process:
        return await LocalProcess.spawn([sys.executable, "-c", code])

    return spawn


@asynccontextmanager
async def session_manager(**kwargs: Any) -> AsyncIterator[SessionManager]:
    manager = SessionManager(**kwargs)
    try:
        yield manager
    finally:
        await manager.aclose()


async def collect(sub: Subscription) -> tuple[list[Output], Terminal]:
    """Every event of ``sub`` until its terminal event (bounded by DEADLINE)."""
    outputs: list[Output] = []
    async with asyncio.timeout(DEADLINE):
        async for event in sub:
            if isinstance(event, Exit | Error):
                return outputs, event
            outputs.append(event)
    raise AssertionError("subscription ended without a terminal event")


def text(outputs: list[Output], stream: str = "stdout") -> str:
    return "".join(o.data for o in outputs if o.stream == stream)


def assert_contiguous(outputs: list[Output], start: int = 0, stream: str = "stdout") -> None:
    """Offsets of ``stream`` start at ``start`` and follow each other byte for byte."""
    position = start
    for out in outputs:
        if out.stream == stream:
            assert out.offset == position, (out, position)
            position += len(out.data.encode("utf-8"))


async def eventually(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` (already scaled) seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - state of a process, no event to wait on
            await asyncio.sleep(0.005)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def session_id(pid: int) -> int:
    """The session id (``setsid``) of a live process."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])
