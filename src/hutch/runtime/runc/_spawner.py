"""The server's side of ``hutch-init``: build it, and start commands through its control socket.

Every sandbox's pid 1 is ``hutch-init`` (``hutch-init.c`` beside this file, compiled once per
source version into the data dir). The server gives it one end of a ``SOCK_SEQPACKET`` socket
pair as stdin; asking it to fork a command costs well under a millisecond where a ``runc exec``
costs about ten. The protocol is described at the top of ``hutch-init.c``.

A spawn goes: SPAWN (stdio descriptors and a memfd holding cwd, argv and env) → SPAWNED (a pidfd of
the waiting child; with a PTY also the terminal's master) → the server moves the child into the
command's freezer cgroup → GO → the child execs. EXITED carries the raw wait status.

The init is code inside the sandbox: the server trusts none of what it says beyond what the kernel
vouches for. The pid comes from the pidfd (the kernel translates it; the init can only name
processes of its own sandbox), and an exit status can only misreport that sandbox's own command.

Credentials (who the command runs as) ride in the SPAWN message after its header, as resolved by
the server (:mod:`hutch.runtime.runc._users`); the child takes them after GO, right before it execs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hutch.runtime.runc._users import MAX_GROUPS, MAX_ID, Credentials

log = logging.getLogger("hutch.runtime")

SOURCE = Path(__file__).with_name("hutch-init.c")

SPAWN, GO, ABORT, SPAWNED, EXITED, PARK, PARKED, HELLO = 1, 2, 3, 4, 5, 6, 7, 8
LIST, ENTRY, LISTED, FORGET, STDIN_EOF = 9, 10, 11, 12, 13
FLAG_PTY, FLAG_USER, FLAG_KEEP = 1, 2, 4
FEATURE_KEEP = 1  # in the init's answer to HELLO
_SPAWN = struct.Struct("=IIQIIHHI")  # the last field is the number of supplementary groups
_USER = struct.Struct("=II")  # uid, gid; then one u32 per supplementary group
_SHORT = struct.Struct("=IiQ")
SPAWN_TIMEOUT = 10.0
_SYS_PIDFD_GETFD = 438  # the same number on every architecture
_libc = ctypes.CDLL(None, use_errno=True)


class SpawnerError(Exception):
    """The init refused or could not start a command (``errno`` names why)."""

    def __init__(self, message: str, errno_: int = 0) -> None:
        super().__init__(message)
        self.errno = errno_


def build_init(out_dir: Path) -> Path | None:
    """Compile ``hutch-init`` (static) into ``out_dir`` unless this source version is there.

    Returns None, after logging why, when no C compiler can build it: sandboxes then run
    catatonit and every command goes through ``runc exec``.
    """
    source = SOURCE.read_bytes()
    target = out_dir / f"hutch-init-{hashlib.sha256(source).hexdigest()[:16]}"
    if target.exists():
        return target
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.warning("no C compiler: sandboxes start commands with runc exec (slower)")
        return None
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = out_dir / f".{target.name}.{os.getpid()}"
    res = subprocess.run(
        [cc, "-O2", "-static", "-o", str(tmp), str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        log.warning("could not build hutch-init; using runc exec:\n%s", res.stderr.strip())
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        return None
    tmp.chmod(0o755)
    tmp.rename(target)
    return target


def host_pid(pidfd: int) -> int:
    """The pid (in our pid namespace) of the process a pidfd refers to; 0 if it is gone."""
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return max(int(line.split()[1]), 0)
    return 0


def _payload(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> int:
    strings = [cwd, *argv, *(f"{k}={v}" for k, v in env.items())]
    if any("\0" in s for s in strings):
        raise SpawnerError("a command, cwd or environment value contains a NUL byte")
    fd = os.memfd_create("hutch-spawn", os.MFD_CLOEXEC)
    try:
        os.write(fd, b"".join(s.encode() + b"\0" for s in strings))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _spawn_header(
    ident: int,
    argc: int,
    envc: int,
    pty: bool,
    rows: int,
    cols: int,
    user: Credentials | None,
    keep: bool = False,
) -> bytes:
    """The SPAWN message (see ``hutch-init.c``); ``user=None`` keeps the init's own ids (root)."""
    flags = (FLAG_PTY if pty else 0) | (FLAG_KEEP if keep else 0)
    if user is None:
        return _SPAWN.pack(SPAWN, flags, ident, argc, envc, rows, cols, 0)
    ids = (user.uid, user.gid, *user.groups)
    if len(user.groups) > MAX_GROUPS or not all(0 <= i <= MAX_ID for i in ids):
        raise SpawnerError(
            f"cannot run as {user}: ids must be 0..{MAX_ID}, at most {MAX_GROUPS} groups"
        )
    return (
        _SPAWN.pack(SPAWN, flags | FLAG_USER, ident, argc, envc, rows, cols, len(user.groups))
        + _USER.pack(user.uid, user.gid)
        + struct.pack(f"={len(user.groups)}I", *user.groups)
    )


@dataclass
class Spawned:
    """A child waiting for GO: its pid in the server's namespace and, for a PTY, the master."""

    id: int
    pid: int
    master: int | None


@dataclass
class Kept:
    """A command whose pipe ends the init keeps (FLAG_KEEP), as LIST reports it: the raw wait
    status once it exited, and dups of the server's ends (stdin None once closed)."""

    id: int
    status: int | None
    stdout: int
    stderr: int
    stdin: int | None


def _close_kept(e: Kept) -> None:
    for fd in (e.stdout, e.stderr, e.stdin):
        if fd is not None:
            os.close(fd)


def take_socket(init_pid: int, fd: int) -> socket.socket:
    """Our end of a sandbox init's control socket, taken back from the init that holds it (see
    PARK in ``hutch-init.c``) with ``pidfd_getfd``; raises OSError if there is none at ``fd``."""
    pidfd = os.pidfd_open(init_pid)
    try:
        got = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if got < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd: {os.strerror(err)}")
    finally:
        os.close(pidfd)
    try:
        os.set_inheritable(got, False)
        sock = socket.socket(fileno=got)
    except OSError:
        os.close(got)
        raise
    # What the init names could be anything it holds: only a sequenced-packet socket will do.
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        sock.close()
        raise OSError(f"fd {fd} of the sandbox's init is not its control socket")
    return sock


class Spawner:
    """One sandbox init's control socket, read from the event loop.

    Made with a new init's socket, its ids start at 1; :meth:`attach` makes one on the socket a
    previous server left with the init (ids then start past the ones that server used, and what
    the init says about those is ignored).
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._next = 1
        #: Messages about ids below this are from an earlier server's commands.
        self._first = 1
        #: Answers to PARK (by id) and to HELLO.
        self._replies: dict[int, asyncio.Future[int]] = {}
        self._hello: asyncio.Future[tuple[int, int]] | None = None
        #: The init knows FLAG_KEEP and LIST (one this server built does; an older one's answer
        #: to HELLO says it does not).
        self.can_keep = True
        self._spawning: dict[int, asyncio.Future[Spawned]] = {}
        self._on_exit: dict[int, Callable[[int], None]] = {}
        self._early_exits: dict[int, int] = {}
        #: Spawns given up on (timed out, cancelled) whose SPAWNED may still come: the init answers
        #: every SPAWN, late or not, and the late answer must be consumed, not taken for a
        #: confused init. An id leaves once its answer (and, for a child, its EXITED) came.
        self._abandoned: set[int] = set()
        #: Kept commands of earlier servers that this one took over (their EXITED matter).
        self._adopted: set[int] = set()
        #: The answer to a LIST being collected.
        self._listing: tuple[int, list[Kept], asyncio.Future[list[Kept]]] | None = None
        self.closed = False
        self._loop.add_reader(sock.fileno(), self._readable)

    async def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        stdio: tuple[int, int, int] | None,
        rows: int = 24,
        cols: int = 80,
        user: Credentials | None = None,
        keep: tuple[int, int, int] | None = None,
    ) -> Spawned:
        """Fork a child that waits for :meth:`go`; ``stdio=None`` asks for a new PTY.

        With ``user`` the command runs with those credentials; without, as the init (root).
        With ``keep`` (our stdout, stderr and stdin ends) the init keeps copies of those until
        :meth:`forget`, and the command's exit status (see FLAG_KEEP in ``hutch-init.c``).
        """
        if self.closed:
            raise SpawnerError("the sandbox's init is not listening")
        ident = self._next
        self._next += 1
        header = _spawn_header(
            ident, len(argv), len(env), stdio is None, rows, cols, user, keep is not None
        )
        payload = _payload(argv, env, cwd)
        fut: asyncio.Future[Spawned] = self._loop.create_future()
        self._spawning[ident] = fut
        try:
            try:
                await self._send(header, [payload, *(stdio or ()), *(keep or ())])
            finally:
                os.close(payload)
        except BaseException:
            self._spawning.pop(ident, None)  # never sent: no answer will come
            raise
        try:
            return await asyncio.wait_for(asyncio.shield(fut), SPAWN_TIMEOUT)
        except BaseException as exc:
            # Timed out or cancelled: a child may exist already, and it must not run.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                spawned = fut.result()
                if spawned.master is not None:
                    os.close(spawned.master)
                self._abandoned.add(ident)  # its EXITED is still to come
            elif not fut.done():
                self._abandoned.add(ident)
            self._send_nowait(_SHORT.pack(ABORT, 0, ident))
            if keep is not None:
                self.forget(ident)
            if isinstance(exc, TimeoutError):
                raise SpawnerError("the sandbox's init did not answer") from None
            raise
        finally:
            self._spawning.pop(ident, None)

    async def park(self) -> int:
        """Have the init hold a copy of our end of the socket, so that it outlives this server;
        returns the init's fd number for it (for :func:`take_socket`)."""
        ident = self._next
        self._next += 1
        fut: asyncio.Future[int] = self._loop.create_future()
        self._replies[ident] = fut
        ours = os.dup(self._sock.fileno())
        try:
            await self._send(_SHORT.pack(PARK, 0, ident), [ours])
            fd = await asyncio.wait_for(fut, SPAWN_TIMEOUT)
        except TimeoutError:
            raise SpawnerError("the sandbox's init did not answer") from None
        finally:
            os.close(ours)
            self._replies.pop(ident, None)
        if fd < 0:
            raise SpawnerError(f"the sandbox's init cannot hold the socket: {os.strerror(-fd)}")
        return fd

    @classmethod
    async def attach(cls, sock: socket.socket) -> Spawner:
        """A spawner on a control socket an earlier server used (see :func:`take_socket`)."""
        self = cls(sock)
        self._hello = self._loop.create_future()
        try:
            self._send_nowait(_SHORT.pack(HELLO, 0, 0))
            last, features = await asyncio.wait_for(self._hello, SPAWN_TIMEOUT)
        except BaseException:
            self.close()
            raise
        self._next = self._first = last + 1
        self.can_keep = bool(features & FEATURE_KEEP)
        return self

    @property
    def first_id(self) -> int:
        """Ids below this were used by an earlier server."""
        return self._first

    async def list_kept(self) -> list[Kept]:
        """Every command the init keeps (LIST); the caller owns the descriptors returned.

        Those of an earlier server are adopted: their EXITED, from now on, goes to :meth:`adopt`.
        """
        if self.closed:
            raise SpawnerError("the sandbox's init is not listening")
        if not self.can_keep:
            return []  # an init from before kept commands: it keeps none
        if self._listing is not None:
            raise SpawnerError("a LIST is already in progress")
        ident = self._next
        self._next += 1
        fut: asyncio.Future[list[Kept]] = self._loop.create_future()
        entries: list[Kept] = []
        self._listing = (ident, entries, fut)
        try:
            await self._send(_SHORT.pack(LIST, 0, ident), [])
            return await asyncio.wait_for(asyncio.shield(fut), SPAWN_TIMEOUT)
        except TimeoutError:
            raise SpawnerError("the sandbox's init did not answer") from None
        finally:
            self._listing = None
            if not fut.done():  # given up on: the entries gathered so far are nobody's
                fut.cancel()
                for e in entries:
                    _close_kept(e)

    def adopt(self, ident: int, on_exit: Callable[[int], None]) -> None:
        """Follow an earlier server's kept command: ``on_exit`` gets its raw wait status, or -1
        if the init went away first."""
        if ident in self._early_exits:
            on_exit(self._early_exits.pop(ident))
        else:
            self._on_exit[ident] = on_exit

    def forget(self, ident: int) -> None:
        """Have the init close its copies of a kept command's ends and drop its status."""
        self._adopted.discard(ident)
        self._early_exits.pop(ident, None)
        self._send_nowait(_SHORT.pack(FORGET, 0, ident))

    def stdin_eof(self, ident: int) -> None:
        """Have the init close its copy of a kept command's stdin (so the command sees EOF)."""
        self._send_nowait(_SHORT.pack(STDIN_EOF, 0, ident))

    def release(self, ident: int, on_exit: Callable[[int], None], *, run: bool = True) -> None:
        """Let the waiting child exec (or, with ``run=False``, exit 255 without running).

        ``on_exit`` gets its raw wait status, or -1 if the init went away first.
        """
        if ident in self._early_exits:
            on_exit(self._early_exits.pop(ident))
        else:
            self._on_exit[ident] = on_exit
        self._send_nowait(_SHORT.pack(GO if run else ABORT, 0, ident))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._abandoned.clear()
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        listing = self._listing[2] if self._listing is not None else None
        for fut in [*self._spawning.values(), *self._replies.values(), self._hello, listing]:
            if fut is not None and not fut.done():
                fut.set_exception(SpawnerError("the sandbox's init went away"))
        callbacks, self._on_exit = self._on_exit, {}
        for cb in callbacks.values():
            cb(-1)

    # -- socket ----------------------------------------------------------------------------

    async def _send(self, data: bytes, fds: list[int]) -> None:
        while True:
            try:
                socket.send_fds(self._sock, [data], fds)
                return
            except BlockingIOError:
                ready = self._loop.create_future()
                self._loop.add_writer(self._sock.fileno(), ready.set_result, None)
                try:
                    await ready
                finally:
                    self._loop.remove_writer(self._sock.fileno())
            except OSError as exc:
                self.close()
                raise SpawnerError(f"the sandbox's init is not listening: {exc}") from exc

    def _send_nowait(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._sock.send(data)
        except BlockingIOError:
            self._loop.create_task(self._send(data, []))
        except OSError:
            self.close()

    def _readable(self) -> None:
        while not self.closed:
            try:
                data, fds, flags, _ = socket.recv_fds(self._sock, 64, 3, socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return
            except OSError:
                data, fds, flags = b"", [], 0
            if not data:
                for fd in fds:
                    os.close(fd)
                self.close()
                return
            try:
                self._dispatch(data, fds, flags)
            except Exception:  # a confused init must not take the event loop down
                log.exception("bad message from a sandbox init")
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _dispatch(self, data: bytes, fds: list[int], flags: int) -> None:
        if len(data) != _SHORT.size or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ValueError(f"unexpected message of {len(data)} bytes")
        kind, value, ident = _SHORT.unpack(data)
        if self._hello is not None and not self._hello.done():
            # Attaching: all before the init's answer to HELLO is about the earlier server's
            # commands.
            for fd in fds:
                os.close(fd)
            if kind == HELLO:
                self._hello.set_result((ident, value))
            return
        if kind in (ENTRY, LISTED):
            self._on_listing(kind, value, ident, fds)
            return
        if ident < self._first and kind in (SPAWNED, EXITED) and ident not in self._adopted:
            for fd in fds:
                os.close(fd)
            return  # an earlier server's command
        if kind == PARKED:
            reply = self._replies.get(ident)
            if reply is None or reply.done() or fds:
                raise ValueError(f"unexpected PARKED for {ident}")
            reply.set_result(value)
            return
        if kind == EXITED:
            for fd in fds:
                os.close(fd)
            cb = self._on_exit.pop(ident, None)
            if cb is not None:
                cb(value)
            elif ident in self._abandoned:
                self._abandoned.discard(ident)
            elif ident < self._next or ident in self._adopted:
                self._early_exits[ident] = value
            return
        if kind == SPAWNED and ident in self._abandoned:
            # The late answer to a spawn given up on; the ABORT sent then makes its child, if
            # any, exit without running (its EXITED follows).
            for fd in fds:
                os.close(fd)
            if value != 0 or not fds:
                self._abandoned.discard(ident)
            return
        fut = self._spawning.get(ident)
        if kind != SPAWNED or fut is None or fut.done():
            raise ValueError(f"unexpected message type {kind} for spawn {ident}")
        if value != 0:
            for fd in fds:
                os.close(fd)
            fut.set_exception(SpawnerError(os.strerror(value), value))
            return
        if not fds:
            raise ValueError("SPAWNED without a pidfd")
        pidfd, master = fds[0], (fds[1] if len(fds) > 1 else None)
        try:
            pid = host_pid(pidfd)
        finally:
            os.close(pidfd)
        fut.set_result(Spawned(ident, pid, master))

    def _on_listing(self, kind: int, value: int, ident: int, fds: list[int]) -> None:
        listing = self._listing
        if listing is None or listing[2].done():
            for fd in fds:
                os.close(fd)
            raise ValueError("an answer to a LIST nobody asked")
        request, entries, fut = listing
        if kind == LISTED:
            for fd in fds:
                os.close(fd)
            if ident != request:
                raise ValueError(f"LISTED for {ident}, not {request}")
            if value < 0:
                for e in entries:
                    _close_kept(e)
                fut.set_exception(SpawnerError(f"the init cannot list: {os.strerror(-value)}"))
                return
            fut.set_result(entries)
            return
        if len(fds) not in (2, 3):
            for fd in fds:
                os.close(fd)
            raise ValueError(f"ENTRY with {len(fds)} descriptors")
        if ident < self._first:
            self._adopted.add(ident)
        status = None if value < 0 else value
        entries.append(Kept(ident, status, fds[0], fds[1], fds[2] if len(fds) == 3 else None))


def exit_code(status: int) -> int:
    """Map a raw wait status (or -1 for "never reported") to a shell-style exit code."""
    if status < 0:
        return 137
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 255
