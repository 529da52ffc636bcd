"""PTY commands: runc hands the terminal over its console socket; size, resize, exit code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hutch.runtime._interface import ExecSpec, SpawnError
from hutch.runtime.images import Image
from hutch.runtime.runc import RuncRuntime
from tests.runtime.runc.test_runtime import QUICK, data, image, make_spec, runtime

pytestmark = [pytest.mark.root, pytest.mark.asyncio(loop_scope="session")]
__all__ = ["data", "image", "runtime"]  # fixtures shared with test_runtime


async def _read_until(reader: asyncio.StreamReader, needle: bytes) -> bytes:
    seen = b""
    while needle not in seen:
        chunk = await asyncio.wait_for(reader.read(4096), QUICK)
        if not chunk:
            break
        seen += chunk
    return seen


@pytest.fixture
async def sandbox_id(runtime: RuncRuntime, image: Image) -> AsyncIterator[str]:
    spec = make_spec(image)
    await runtime.create(spec)
    yield spec.id


async def test_pty_size_resize_and_exit(runtime: RuncRuntime, sandbox_id: str) -> None:
    """A PTY starts at the asked size, a resize reaches `stty size`, and the exit code is kept."""
    proc = await runtime.exec(
        sandbox_id, ExecSpec(argv=["/bin/sh"], pty=True, rows=30, cols=100, cwd="/")
    )
    try:
        assert proc.stderr is None and proc.stdin is not None
        proc.stdin.write(b"stty size; tty; echo T=$TERM\n")
        seen = await _read_until(proc.stdout, b"T=xterm")
        assert b"30 100" in seen and b"/dev/pts/" in seen
        proc.resize(50, 132)
        proc.stdin.write(b"stty size; exit 7\n")
        seen = await _read_until(proc.stdout, b"50 132")
        assert b"50 132" in seen
        assert await asyncio.wait_for(proc.wait(), QUICK) == 7
        assert await asyncio.wait_for(proc.stdout.read(), QUICK) is not None  # EOF, not EIO
    finally:
        await proc.close()


async def test_pty_kill(runtime: RuncRuntime, sandbox_id: str) -> None:
    """Killing a PTY command kills its tree and records 137."""
    proc = await runtime.exec(
        sandbox_id, ExecSpec(argv=["/bin/sh", "-c", "setsid sleep 300 & sleep 300"], pty=True)
    )
    try:
        await proc.kill()
        assert await asyncio.wait_for(proc.wait(), QUICK) == 137
    finally:
        await proc.close()


async def test_pty_spawn_failure_is_clear(runtime: RuncRuntime, sandbox_id: str) -> None:
    """A PTY command that cannot start (missing cwd) raises SpawnError with runc's reason."""
    with pytest.raises(SpawnError, match="nonexistent"):
        await runtime.exec(sandbox_id, ExecSpec(argv=["/bin/sh"], pty=True, cwd="/nonexistent"))
