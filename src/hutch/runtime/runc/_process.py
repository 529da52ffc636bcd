"""Processes of sandbox commands: followed through a freezer cgroup, reaped by the server.

A command started by ``runc exec --detach`` is re-parented to the server (a child subreaper) and
reaped with ``waitid(P_PIDFD)``; one started by the sandbox's init (see :mod:`_spawner`) gets its
exit status from the init. Either way kill is the command cgroup's freeze-and-SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import functools
import logging
import os
import socket
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hutch.runtime._interface import Process, SpawnError
from hutch.runtime.runc import _cgroups, _spawner

log = logging.getLogger("hutch.runtime")


def _same(protocol: asyncio.StreamReaderProtocol) -> asyncio.StreamReaderProtocol:
    return protocol


class RuncProcess(Process):
    """A command in its own freezer cgroup; its exit code is 128+N when killed by signal N."""

    def __init__(self, cgroup: Path, spec_file: Path | None, pid_file: Path | None) -> None:
        self._cgroup = cgroup
        self._spec_file = spec_file
        self._pid_file = pid_file
        self.pid = 0

    async def kill(self) -> None:
        await _cgroups.kill_all(self._cgroup)

    def members(self) -> list[int]:
        return _cgroups.pids(self._cgroup)

    def _cleanup(self) -> None:
        for f in (self._spec_file, self._pid_file):
            if f is not None:
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
        # Background children of a finished command may still be running; their cgroup stays
        # until they exit or the sandbox is deleted.
        with contextlib.suppress(OSError):
            _cgroups.remove_if_empty(self._cgroup)


class DetachedProcess(RuncProcess):
    """A command started with ``runc exec --detach``, reaped by this (subreaper) process.

    A non-detached ``runc exec`` relays the command's stdio through pipes of its own and exits
    only at EOF, i.e. when the *last* process holding them exits: ``sleep 300 &`` would keep a
    finished command running. Detached, the command writes straight into our pipes, runc exits
    at once, the command is re-parented to us (we are a child subreaper) and its exit status
    comes from ``waitid(P_PIDFD)``.
    """

    def __init__(self, cgroup: Path, spec_file: Path | None, pid_file: Path | None) -> None:
        super().__init__(cgroup, spec_file, pid_file)
        self._transports: list[asyncio.BaseTransport] = []
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def _connect(self, out: BinaryIO, err: BinaryIO, in_: BinaryIO) -> None:
        loop = asyncio.get_running_loop()
        readers = []
        for pipe in (out, err):
            reader = asyncio.StreamReader(limit=1 << 20, loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await loop.connect_read_pipe(functools.partial(_same, protocol), pipe)
            self._transports.append(transport)
            readers.append(reader)
        self.stdout, self.stderr = readers
        proto = asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop))
        wtransport, _ = await loop.connect_write_pipe(functools.partial(_same, proto), in_)
        self._transports.append(wtransport)
        self.stdin = asyncio.StreamWriter(wtransport, proto, None, loop)

    def _adopt(self, runc_code: int) -> None:
        """After ``runc exec -d`` exited: follow the command, or record why it never ran."""
        if runc_code != 0:
            self._exit.set_result(runc_code)  # runc's message is on the command's stderr
            return
        assert self._pid_file is not None
        try:
            self.pid = int(self._pid_file.read_text())
            pidfd = os.pidfd_open(self.pid)
        except (OSError, ValueError) as exc:
            log.warning("lost track of a command started by runc: %s", exc)
            self._exit.set_result(255)
            return
        loop = asyncio.get_running_loop()
        loop.add_reader(pidfd, self._reap, pidfd)

    def _reap(self, pidfd: int) -> None:
        try:
            res = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            log.warning("command %d was not re-parented to the server; exit code lost", self.pid)
            res = None
        else:
            if res is None:
                return  # not exited yet (spurious wake-up)
        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
        if res is None:
            code = 255
        elif res.si_code == os.CLD_EXITED:
            code = res.si_status
        else:
            code = 128 + res.si_status
        if not self._exit.done():
            self._exit.set_result(code)

    def _exited(self, status: int) -> None:
        """A wait status reported by the sandbox's init (-1: the init went away)."""
        if status < 0:
            # The sandbox is going: make sure nothing of the command outlives the report.
            task = asyncio.get_running_loop().create_task(self.kill())
            task.add_done_callback(lambda _t: self._set_exit(137))
            return
        self._set_exit(_spawner.exit_code(status))

    def _set_exit(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    async def close(self) -> None:
        if not self._exit.done():
            await self.kill()
            await self.wait()
        for transport in self._transports:
            transport.close()
        self._cleanup()


class _EioIsEof(asyncio.StreamReaderProtocol):
    """A PTY master reads EIO once the last slave fd closes: that is the end of output."""

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, OSError) and exc.errno == errno.EIO:
            exc = None
        super().connection_lost(exc)


class PtyProcess(DetachedProcess):
    """A command on a pseudo-terminal whose master runc handed us over the console socket."""

    def __init__(self, cgroup: Path, spec_file: Path | None, pid_file: Path | None) -> None:
        super().__init__(cgroup, spec_file, pid_file)
        self._master = -1

    async def _connect_pty(self, master: int) -> None:
        loop = asyncio.get_running_loop()
        self._master = os.dup(master)  # kept for TIOCSWINSZ; the transports own the others
        reader = asyncio.StreamReader(limit=1 << 20, loop=loop)
        protocol = _EioIsEof(reader)
        rfile = os.fdopen(master, "rb", 0)
        transport, _ = await loop.connect_read_pipe(functools.partial(_same, protocol), rfile)
        self._transports.append(transport)
        wfile = os.fdopen(os.dup(master), "wb", 0)
        proto = asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop))
        wtransport, _ = await loop.connect_write_pipe(functools.partial(_same, proto), wfile)
        self._transports.append(wtransport)
        self.stdout, self.stderr = reader, None
        self.stdin = asyncio.StreamWriter(wtransport, proto, None, loop)

    def resize(self, rows: int, cols: int) -> None:
        if self._master >= 0:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    async def close(self) -> None:
        await super().close()
        if self._master >= 0:
            os.close(self._master)
            self._master = -1


def check_peer_is_root(conn: socket.socket) -> None:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != 0:
        raise SpawnError("console socket peer is not root; refusing its terminal")


#: Output already handed on stays in a kept log this long (bytes per stream) before its disk
#: blocks are given back: a restarted server replays at most this much history.
KEPT_HISTORY = 8 * 1024 * 1024
#: Most bytes a kept stream moves from its pipe, or reads from its file, at once; its pipe is
#: made this large too, so a fast writer's output moves in few system calls (and more of it
#: waits in the pipe, which the init keeps, while no server reads).
KEPT_BATCH = 1024 * 1024
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


class KeptReader(asyncio.StreamReader):
    """One stream of a kept command: what leaves the pipe is already in the log file.

    Each read first moves bytes from the pipe into the end of the file in the kernel
    (``splice(2)``), then reads them from the file: a server killed at any point leaves every
    byte either still in the pipe (whose read end the init keeps) or in the file, never only in
    its own memory. Reads are pulled by the session, so backpressure stays the pipe's. Only
    :meth:`read` is supported. The file's blocks more than :data:`KEPT_HISTORY` behind what was
    handed on are punched out, so its disk use stays bounded while its offsets stay the
    stream's offsets.
    """

    def __init__(self, pipe: int, file: int, pos: int, end: int) -> None:
        super().__init__()
        os.set_blocking(pipe, False)
        with contextlib.suppress(OSError):  # above the host's pipe-max-size: stays as it is
            fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, KEPT_BATCH)
        self._pipe = pipe
        self._file = file
        self._pos = pos  # the next byte to hand on
        self._end = end  # the file's size: bytes moved out of the pipe
        self._punched = 0
        self._eof = False
        #: Bytes read from the file but not handed on yet (all of them at ``_pos``).
        self._ahead = memoryview(b"")

    @property
    def offset(self) -> int:
        return self._pos

    async def read(self, n: int = -1) -> bytes:
        if n <= 0:
            n = 1 << 16
        if not self._ahead:
            if self._pos + len(self._ahead) >= self._end and not self._eof:
                await self._fill()
            if self._pos >= self._end:
                return b""
            # Read ahead from the file (its bytes are kept there already): one pread for
            # many of the session's reads.
            self._ahead = memoryview(
                os.pread(self._file, min(KEPT_BATCH, self._end - self._pos), self._pos)
            )
        data = bytes(self._ahead[:n])
        self._ahead = self._ahead[len(data) :]
        self._pos += len(data)
        if self._pos - self._punched >= 2 * KEPT_HISTORY:
            upto = (self._pos - KEPT_HISTORY) & ~0xFFFF
            flags = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
            if _libc.fallocate(self._file, flags, self._punched, upto - self._punched) == 0:
                self._punched = upto
        return data

    async def _fill(self) -> None:
        """Move what the pipe holds (up to :data:`KEPT_BATCH`) to the file; wait for some if
        it holds nothing."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                moved = os.splice(
                    self._pipe,
                    self._file,
                    KEPT_BATCH,
                    offset_dst=self._end,
                    flags=os.SPLICE_F_NONBLOCK,
                )
            except BlockingIOError:
                ready: asyncio.Future[None] = loop.create_future()

                def wake(f: asyncio.Future[None] = ready) -> None:
                    if not f.done():
                        f.set_result(None)

                loop.add_reader(self._pipe, wake)
                try:
                    await ready
                finally:
                    loop.remove_reader(self._pipe)
                continue
            if moved == 0:
                self._eof = True
            self._end += moved
            # More may be there already (a pipe hands over one buffer per splice).
            while moved and self._end - self._pos < KEPT_BATCH:
                try:
                    moved = os.splice(
                        self._pipe,
                        self._file,
                        KEPT_BATCH - (self._end - self._pos),
                        offset_dst=self._end,
                        flags=os.SPLICE_F_NONBLOCK,
                    )
                except BlockingIOError:
                    break
                if moved == 0:
                    self._eof = True
                self._end += moved
            return

    def close(self) -> None:
        for fd in (self._pipe, self._file):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pipe = self._file = -1


class _KeptStdin(asyncio.StreamWriter):
    """A kept command's stdin: closing it also has the init close its copy (else no EOF)."""

    on_close: Callable[[], None] | None = None

    def close(self) -> None:
        if self.on_close is not None:
            self.on_close()
            self.on_close = None
        super().close()


@dataclass
class KeptFiles:
    """Where a kept command's output and description live (host side, in its bundle)."""

    stdout: Path
    stderr: Path
    meta: Path

    def remove(self) -> None:
        for path in (self.stdout, self.stderr, self.meta):
            path.unlink(missing_ok=True)


class KeptProcess(DetachedProcess):
    """A command started through the init with FLAG_KEEP: it, its pipes and its output outlive
    the server (see ``hutch-init.c``); a later server adopts it (``ExecMixin.kept_commands``).

    :meth:`close` releases it for good (FORGET, files removed); :meth:`detach` only lets go of
    this server's descriptors, for the next server to take over.
    """

    def __init__(
        self, cgroup: Path, spawner: _spawner.Spawner, ident: int, files: KeptFiles
    ) -> None:
        super().__init__(cgroup, None, None)
        self._spawner = spawner
        self._ident = ident
        self._files = files
        self._kept_readers: list[KeptReader] = []
        self._detached = False

    async def _connect_kept(
        self,
        out: int,
        err: int,
        in_: int | None,
        positions: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0)),
    ) -> None:
        """Take our ends (owned from now on, closed here on failure) and open the log files;
        ``positions`` are ``(next byte to hand on, file size)`` per stream (a later server
        resumes mid-file)."""
        readers: list[KeptReader] = []
        try:
            for path, (pos, end) in zip(
                (self._files.stdout, self._files.stderr), positions, strict=True
            ):
                file = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                readers.append(KeptReader(out if not readers else err, file, pos, end))
        except BaseException:
            for r in readers:
                r.close()
            for fd in (out, err, in_)[len(readers) :]:
                if fd is not None:
                    os.close(fd)
            raise
        self._kept_readers = readers
        self.stdout, self.stderr = readers
        self.stdin = None
        if in_ is not None:
            loop = asyncio.get_running_loop()
            proto = asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop))
            wtransport, _ = await loop.connect_write_pipe(
                functools.partial(_same, proto), os.fdopen(in_, "wb", 0)
            )
            self._transports.append(wtransport)
            stdin = _KeptStdin(wtransport, proto, None, loop)
            stdin.on_close = functools.partial(self._spawner.stdin_eof, self._ident)
            self.stdin = stdin

    def _exited(self, status: int) -> None:
        if status < 0 and self._detached:
            return  # this server let go; the init (if any) still has the command
        super()._exited(status)

    def _release_fds(self) -> None:
        for transport in self._transports:
            transport.close()
        for reader in self._kept_readers:
            reader.close()

    async def close(self) -> None:
        if not self._exit.done():
            await self.kill()
            await self.wait()
        self._release_fds()
        self._spawner.forget(self._ident)
        self._files.remove()
        self._cleanup()

    async def detach(self) -> None:
        """Let go without ending anything: the command, its pipes (kept by the init) and its
        output stay for the next server."""
        self._detached = True
        if self.stdin is not None:
            assert isinstance(self.stdin, _KeptStdin)
            self.stdin.on_close = None  # closing our end here is not the client's EOF
        self._release_fds()
