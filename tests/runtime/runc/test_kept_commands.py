"""Kept commands (FLAG_KEEP, LIST, FORGET, STDIN_EOF in ``hutch-init.c``) and their output files.

Against the real ``hutch-init`` binary run as an ordinary process (see ``test_spawner``): a
command whose server went away keeps its pipes and its exit status in the init, and the server's
reader moves every byte through a file before handing it on.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path

import pytest

from hutch.runtime.runc import _spawner
from hutch.runtime.runc._process import KeptReader
from tests.runtime.runc.test_spawner import init, init_binary

pytestmark = [pytest.mark.asyncio(loop_scope="session")]
__all__ = ["init", "init_binary"]  # fixtures

SCRIPT = "read x; echo out-$x; echo err >&2; exit 3"


def _read_all(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 65536):
        parts.append(chunk)
    return b"".join(parts)


async def test_a_kept_command_outlives_its_server_and_is_listed_with_its_ends(
    init: tuple[subprocess.Popen[bytes], socket.socket],
) -> None:
    """After the server's ends and socket are gone, the command still waits on stdin (no EOF,
    no SIGPIPE); a new server LISTs it with working ends, follows its exit and FORGETs it."""
    proc, sock = init
    spawner = _spawner.Spawner(sock)
    fd = await spawner.park()
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        spawned = await spawner.spawn(
            ["sh", "-c", SCRIPT],
            {"PATH": "/usr/bin:/bin"},
            "/",
            (in_r, out_w, err_w),
            keep=(out_r, err_r, in_w),
        )
    finally:
        for end in (in_r, out_w, err_w):
            os.close(end)
    spawner.release(spawned.id, lambda _status: None)
    for end in (out_r, err_r, in_w):  # the server dies: its ends go
        os.close(end)
    spawner.close()
    again = await _spawner.Spawner.attach(_spawner.take_socket(proc.pid, fd))
    try:
        assert Path(f"/proc/{spawned.pid}").exists(), "the command still waits for input"
        [kept] = await again.list_kept()
        assert (kept.id, kept.status) == (spawned.id, None) and kept.stdin is not None
        exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        again.adopt(kept.id, exited.set_result)
        os.write(kept.stdin, b"hi\n")
        os.close(kept.stdin)
        assert os.waitstatus_to_exitcode(await asyncio.wait_for(exited, 10)) == 3
        assert _read_all(kept.stdout) == b"out-hi\n"
        assert _read_all(kept.stderr) == b"err\n"
        # Exited but not forgotten: still listed, with its status.
        [after] = await again.list_kept()
        assert after.status is not None and os.waitstatus_to_exitcode(after.status) == 3
        _spawner._close_kept(after)
        again.forget(kept.id)
        assert await again.list_kept() == []
    finally:
        again.close()


async def test_stdin_eof_closes_the_inits_copy_and_pty_cannot_be_kept(
    init: tuple[subprocess.Popen[bytes], socket.socket],
) -> None:
    """STDIN_EOF gives a kept command its end of input (the init's copy would hold it open), and
    a SPAWN asking to keep a terminal is refused (EINVAL)."""
    _proc, sock = init
    spawner = _spawner.Spawner(sock)
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    try:
        spawned = await spawner.spawn(
            ["cat"],
            {"PATH": "/usr/bin:/bin"},
            "/",
            (in_r, out_w, out_w),
            keep=(out_r, out_r, in_w),
        )
        os.close(out_w)
        exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        spawner.release(spawned.id, exited.set_result)
        os.close(in_w)
        await asyncio.sleep(0)
        assert not exited.done()
        spawner.stdin_eof(spawned.id)
        assert os.waitstatus_to_exitcode(await asyncio.wait_for(exited, 10)) == 0
        with pytest.raises(_spawner.SpawnerError) as refused:
            await spawner.spawn(["true"], {}, "/", None, keep=(out_r, out_r, in_r))
        assert refused.value.errno == 22
    finally:
        for end in (in_r, out_r):
            os.close(end)
        spawner.close()


async def test_the_reader_moves_every_byte_through_its_file(tmp_path: Path) -> None:
    """What a kept stream hands on is in its file first, at the same offsets (the file may run
    ahead: what the pipe held is moved at once); a second reader on the same pipe and file (a
    restarted server) continues exactly: the file's bytes, then the pipe's."""
    pipe_r, pipe_w = os.pipe2(os.O_CLOEXEC)
    path = tmp_path / "out"
    data = bytes(range(256)) * 4096  # 1 MiB
    os.write(pipe_w, data[:40000])
    first = KeptReader(os.dup(pipe_r), os.open(path, os.O_RDWR | os.O_CREAT), 0, 0)
    got = await first.read(30000)
    kept = path.read_bytes()
    assert got == data[:30000] and len(kept) >= 30000 and kept == data[: len(kept)]
    first.close()  # dies here: the rest is still in the pipe
    size = path.stat().st_size
    second = KeptReader(pipe_r, os.open(path, os.O_RDWR), len(got), size)
    writer = asyncio.get_running_loop().run_in_executor(None, _write_rest, pipe_w, data[40000:])
    rest = []
    while chunk := await second.read(65536):
        rest.append(chunk)
    await writer
    second.close()
    assert got + b"".join(rest) == data
    assert path.read_bytes() == data


def _write_rest(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as f:
        f.write(data)


async def test_an_init_from_before_keeps_nothing_and_is_not_asked() -> None:
    """An init whose answer to HELLO names no features (built before kept commands): the server
    neither lists its kept commands nor asks it to keep one (it would refuse the flag)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    try:
        attaching = asyncio.ensure_future(_spawner.Spawner.attach(ours))
        hello = await asyncio.get_running_loop().sock_recv(theirs, 64)
        assert _spawner._SHORT.unpack(hello)[0] == _spawner.HELLO
        theirs.send(_spawner._SHORT.pack(_spawner.HELLO, 0, 7))
        old = await asyncio.wait_for(attaching, 10)
        try:
            assert not old.can_keep and old.first_id == 8
            assert await old.list_kept() == []
        finally:
            old.close()
    finally:
        theirs.close()
