"""Commands of the runc runtime: starting processes in a running sandbox, and connecting to it.

A command starts through the sandbox's init (its control socket, see :mod:`_spawner`; after a
server restart, taken back from the init that holds it). A sandbox whose init holds none (started
by a server from before that) has its commands started with ``runc exec`` (pipes, or a PTY handed
over a console socket). ``connect`` opens a TCP connection inside the
sandbox's network namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from hutch.runtime import _netns
from hutch.runtime._interface import (
    ExecSpec,
    KeptCommand,
    ResourceExhausted,
    SandboxNotFound,
    SpawnError,
)
from hutch.runtime.runc import _cgroups, _spawner, _spec, _users
from hutch.runtime.runc._bundle import CONTROL_FD, BundleMixin
from hutch.runtime.runc._process import (
    DetachedProcess,
    KeptFiles,
    KeptProcess,
    PtyProcess,
    RuncProcess,
    check_peer_is_root,
)

log = logging.getLogger("hutch.runtime")


def _all_pipes(entry: _spawner.Kept) -> bool:
    """What the init (code inside the sandbox) hands back as a command's ends must be pipes."""
    try:
        return all(
            stat.S_ISFIFO(os.fstat(fd).st_mode)
            for fd in (entry.stdout, entry.stderr, entry.stdin)
            if fd is not None
        )
    except OSError:
        return False


async def _tail(path: Path, size: int, take: int) -> tuple[int, bytes]:
    """Up to the last ``take`` of the first ``size`` bytes of a kept log file, and the offset
    they start at (off the event loop). Blocks given back (see ``KEPT_HISTORY``) read as zeros:
    the tail starts after the last of them."""
    if take <= 0:
        return size, b""

    def read() -> tuple[int, bytes]:
        with path.open("rb") as f:
            try:
                start = os.lseek(f.fileno(), size - take, os.SEEK_DATA)
            except OSError:  # ENXIO: no data past it
                return size, b""
            start = min(start, size)
            f.seek(start)
            return start, f.read(size - start)

    return await asyncio.to_thread(read)


def _enter_cgroup(proc: RuncProcess, cgroup: Path, spawned: _spawner.Spawned) -> None:
    """Move a child waiting for GO into its command's cgroup (kill takes the tree there)."""
    if spawned.pid:
        with contextlib.suppress(ProcessLookupError):  # already gone: EXITED follows
            (cgroup / "cgroup.procs").write_text(str(spawned.pid))
    proc.pid = spawned.pid


class ExecMixin(BundleMixin):
    """The commands part of :class:`~hutch.runtime.runc.RuncRuntime` (it sets these)."""

    state_root: Path
    _runc_bin: str
    _spawners: dict[str, _spawner.Spawner]
    #: Attempts to take back a control socket from an earlier server (see _reattach).
    _reattaching: dict[str, asyncio.Future[_spawner.Spawner | None]]

    if TYPE_CHECKING:

        def _private_keyring(self) -> None: ...

    def root_fd(self, sandbox_id: str) -> int:
        pid = self.init_pid(sandbox_id)
        try:
            return os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            self._init_pids.pop(sandbox_id, None)
            raise SandboxNotFound(f"sandbox {sandbox_id} is not running") from exc

    async def connect(self, sandbox_id: str, port: int) -> socket.socket:
        # The socket is made in the network namespace of the sandbox's init, from a throwaway
        # thread (see _netns); 10 s bounds a connect to a listener whose backlog is full.
        pid = self.init_pid(sandbox_id)
        try:
            return await _netns.aconnect_in_netns(pid, "127.0.0.1", port, timeout=10.0)
        except (FileNotFoundError, ProcessLookupError, _netns.SharedNamespaceError) as exc:
            self._init_pids.pop(sandbox_id, None)
            raise SandboxNotFound(f"sandbox {sandbox_id} is not running") from exc

    async def _credentials(self, sandbox_id: str, user: str | None) -> _users.Credentials | None:
        """Resolve ``user`` against the sandbox's /etc/passwd and /etc/group (see _users).

        None stays None: the command runs as the init does (root, no supplementary groups).
        """
        if user is None:
            return None
        root = self.root_fd(sandbox_id)
        try:
            return await asyncio.to_thread(_users.resolve_in, root, user)
        except _users.UserError as exc:
            raise SpawnError(str(exc)) from exc
        finally:
            os.close(root)

    async def _reattach(self, sandbox_id: str) -> _spawner.Spawner | None:
        """The control socket of a sandbox an earlier server started, taken back from its init
        (which holds it at the fd number in the bundle's ``CONTROL_FD``); None if there is none.

        One attempt per sandbox and server: a concurrent caller waits for it, and a failure
        (logged) leaves the sandbox on ``runc exec``.
        """
        attempt = self._reattaching.get(sandbox_id)
        if attempt is None:
            attempt = asyncio.ensure_future(self._take_spawner(sandbox_id))
            self._reattaching[sandbox_id] = attempt
        return await asyncio.shield(attempt)

    async def _take_spawner(self, sandbox_id: str) -> _spawner.Spawner | None:
        try:
            fd = int((self._bundle(sandbox_id) / CONTROL_FD).read_text())
        except (FileNotFoundError, ValueError):
            return None  # started by a server from before: runc exec
        try:
            sock = _spawner.take_socket(self.init_pid(sandbox_id), fd)
            spawner = await _spawner.Spawner.attach(sock)
        except (OSError, _spawner.SpawnerError, SandboxNotFound) as exc:
            log.warning("sandbox %s: cannot take back its control socket: %s", sandbox_id, exc)
            return None
        if sandbox_id in self._spawners:  # a start made a new one meanwhile
            spawner.close()
            return self._spawners[sandbox_id]
        self._spawners[sandbox_id] = spawner
        return spawner

    def _check_pids(self, sandbox_id: str, errno_: int = 0) -> None:
        """Raise :class:`ResourceExhausted` if the sandbox is at its process limit (or ``errno_``
        is the EAGAIN of a fork its limit refused).

        Checked before a command is asked of the init: at the limit its fork fails anyway, and a
        sandbox at its limit is often one whose processes also eat its CPU quota, where the
        init's answer would be slow in coming.
        """
        pids = _cgroups.ROOT / "pids" / _spec.cgroup_parent(sandbox_id).lstrip("/")
        if not (pids / "pids.max").exists():
            pids = _cgroups.ROOT / _spec.cgroup_parent(sandbox_id).lstrip("/")  # cgroup v2
        try:
            limit = (pids / "pids.max").read_text().strip()
            current = int((pids / "pids.current").read_text())
        except (OSError, ValueError):
            return
        if errno_ == errno.EAGAIN or (limit != "max" and current >= int(limit)):
            raise ResourceExhausted(
                f"the sandbox is at its limit of {limit} processes; end some of its processes "
                "(or kill the command that forks them) and try again"
            )

    async def exec(self, sandbox_id: str, spec: ExecSpec) -> RuncProcess:
        bundle = self._bundle(sandbox_id)
        self._check_pids(sandbox_id)
        user = await self._credentials(sandbox_id, spec.user)
        cmd_id = uuid.uuid4().hex
        cgroup = _cgroups.command_cgroup(_spec.cgroup_parent(sandbox_id), cmd_id)
        try:
            _cgroups.create(cgroup)
        except FileNotFoundError as exc:
            raise SandboxNotFound(f"sandbox {sandbox_id} is not running") from exc
        env = self.env_of(sandbox_id)
        if spec.pty:
            env.setdefault("TERM", "xterm-256color")
        env.update(spec.env)
        spawner = self._spawners.get(sandbox_id) or await self._reattach(sandbox_id)
        if spawner is not None and not spawner.closed:
            if spec.keep is not None and not spec.pty and spawner.can_keep:
                return await self._spawn_kept(
                    sandbox_id, spawner, cgroup, spec, env, user, cmd_id, spec.keep
                )
            return await self._spawn(sandbox_id, spawner, cgroup, spec, env, user)
        spec_file = bundle / "exec" / f"{cmd_id}.json"
        pid_file = bundle / "exec" / f"{cmd_id}.pid"
        spec_file.write_text(
            json.dumps(
                _spec.process(
                    list(spec.argv),
                    env,
                    spec.cwd,
                    terminal=spec.pty,
                    size=(spec.rows, spec.cols),
                    user=user,
                )
            )
        )
        args = [
            "--root",
            str(self.state_root),
            "exec",
            "--process",
            str(spec_file),
            "--cgroup",
            f"freezer:{cmd_id}",
            "--pid-file",
            str(pid_file),
        ]
        if spec.pty:
            return await self._exec_pty(args, sandbox_id, cgroup, spec_file, pid_file)
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        # Our ends, as file objects: closing one twice (here and by its transport) is harmless.
        ours = [os.fdopen(out_r, "rb", 0), os.fdopen(err_r, "rb", 0), os.fdopen(in_w, "wb", 0)]
        try:
            try:
                self._private_keyring()
                runc = await asyncio.create_subprocess_exec(
                    self._runc_bin,
                    *args,
                    "--detach",
                    sandbox_id,
                    stdin=in_r,
                    stdout=out_w,
                    stderr=err_w,
                )
            finally:
                for fd in (in_r, out_w, err_w):
                    os.close(fd)
            proc = DetachedProcess(cgroup, spec_file, pid_file)
            await proc._connect(*ours)
        except OSError as exc:
            for f in ours:
                f.close()
            _cgroups.remove_if_empty(cgroup)
            raise SpawnError(f"could not start runc: {exc}") from exc
        try:
            code = await asyncio.shield(runc.wait())
        except BaseException:
            # Cancelled while runc starts the command: follow it anyway, then kill and reap it.
            async def _abandon() -> None:
                proc._adopt(await runc.wait())
                await proc.close()

            await asyncio.shield(_abandon())
            raise
        proc._adopt(code)
        return proc

    async def _spawn(
        self,
        sandbox_id: str,
        spawner: _spawner.Spawner,
        cgroup: Path,
        spec: ExecSpec,
        env: dict[str, str],
        user: _users.Credentials | None = None,
    ) -> RuncProcess:
        """Start a command through the sandbox's init (see :mod:`_spawner`)."""
        ours: list[BinaryIO] = []
        theirs: tuple[int, int, int] | None = None
        if not spec.pty:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            ours = [os.fdopen(out_r, "rb", 0), os.fdopen(err_r, "rb", 0), os.fdopen(in_w, "wb", 0)]
            theirs = (in_r, out_w, err_w)
        try:
            try:
                spawned = await spawner.spawn(
                    spec.argv, env, spec.cwd, theirs, rows=spec.rows, cols=spec.cols, user=user
                )
            finally:
                for fd in theirs or ():
                    os.close(fd)
        except BaseException as exc:
            for f in ours:
                f.close()
            self._spawn_failed(sandbox_id, cgroup, spec, exc)
            raise
        proc = (PtyProcess if spec.pty else DetachedProcess)(cgroup, None, None)
        try:
            _enter_cgroup(proc, cgroup, spawned)
            if isinstance(proc, PtyProcess):
                assert spawned.master is not None
                master, spawned.master = spawned.master, None
                await proc._connect_pty(master)
            else:
                await proc._connect(*ours)
        except BaseException:
            spawner.release(spawned.id, proc._exited, run=False)
            if spawned.master is not None:
                os.close(spawned.master)
            for f in ours:
                f.close()
            await asyncio.shield(proc.close())
            raise
        spawner.release(spawned.id, proc._exited)
        return proc

    def _spawn_failed(
        self, sandbox_id: str, cgroup: Path, spec: ExecSpec, exc: BaseException
    ) -> None:
        """After the init could not start a command: drop its cgroup, and raise what to say
        (ResourceExhausted at the process limit, SpawnError) if it was the init's refusal."""
        _cgroups.remove_if_empty(cgroup)
        if isinstance(exc, _spawner.SpawnerError):
            self._check_pids(sandbox_id, exc.errno)
            raise SpawnError(f"could not start {spec.argv[0]!r} in {spec.cwd!r}: {exc}") from exc

    def _kept_files(self, sandbox_id: str, cmd_id: str) -> KeptFiles:
        exec_dir = self._bundle(sandbox_id) / "exec"
        return KeptFiles(
            exec_dir / f"{cmd_id}.out", exec_dir / f"{cmd_id}.err", exec_dir / f"{cmd_id}.kept"
        )

    async def _spawn_kept(
        self,
        sandbox_id: str,
        spawner: _spawner.Spawner,
        cgroup: Path,
        spec: ExecSpec,
        env: dict[str, str],
        user: _users.Credentials | None,
        cmd_id: str,
        keep: str,
    ) -> RuncProcess:
        """Start a command whose pipes the init keeps and whose output goes through log files
        in the bundle (see :class:`KeptProcess`); ``<cmd_id>.kept`` there says, for a later
        server, which init id, cgroup and ``keep`` text it has."""
        files = self._kept_files(sandbox_id, cmd_id)
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        ours = [out_r, err_r, in_w]
        try:
            try:
                spawned = await spawner.spawn(
                    spec.argv,
                    env,
                    spec.cwd,
                    (in_r, out_w, err_w),
                    rows=spec.rows,
                    cols=spec.cols,
                    user=user,
                    keep=(out_r, err_r, in_w),
                )
            finally:
                for fd in (in_r, out_w, err_w):
                    os.close(fd)
        except BaseException as exc:
            for fd in ours:
                os.close(fd)
            self._spawn_failed(sandbox_id, cgroup, spec, exc)
            raise
        proc = KeptProcess(cgroup, spawner, spawned.id, files)
        try:
            _enter_cgroup(proc, cgroup, spawned)
            tmp = files.meta.with_suffix(".tmp")
            tmp.write_text(json.dumps({"id": spawned.id, "cgroup": str(cgroup), "keep": keep}))
            tmp.rename(files.meta)
            ours = []
            await proc._connect_kept(out_r, err_r, in_w)  # owns them now, even if it fails
        except BaseException:
            for fd in ours:
                os.close(fd)
            spawner.release(spawned.id, proc._exited, run=False)
            await asyncio.shield(proc.close())
            raise
        spawner.release(spawned.id, proc._exited)
        return proc

    async def kept_commands(self, sandbox_id: str, history: int) -> list[KeptCommand]:
        """Commands an earlier server started with ``keep`` (see :meth:`_spawn_kept`), taken
        over: the init lists them with their pipe ends and exit status; their files say the rest.
        A kept command with no readable description is forgotten (and its files removed)."""
        spawner = self._spawners.get(sandbox_id) or await self._reattach(sandbox_id)
        if spawner is None or spawner.closed:
            return []
        try:
            entries = await spawner.list_kept()
        except _spawner.SpawnerError as exc:
            log.warning("sandbox %s: cannot list its kept commands: %s", sandbox_id, exc)
            return []
        described: dict[int, tuple[str, dict[str, object]]] = {}
        for path in (self._bundle(sandbox_id) / "exec").glob("*.kept"):
            try:
                meta = json.loads(path.read_text())
                described[int(meta["id"])] = (path.stem, meta)
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("sandbox %s: unreadable %s", sandbox_id, path.name)
        found: list[KeptCommand] = []
        for entry in entries:
            if entry.id >= spawner.first_id:
                _spawner._close_kept(entry)  # one of this server's own: not ours to adopt
                continue
            cmd_id, meta = described.get(entry.id, ("", {}))
            if not cmd_id or not isinstance(meta.get("keep"), str) or not _all_pipes(entry):
                _spawner._close_kept(entry)
                spawner.forget(entry.id)
                continue
            try:
                found.append(await self._adopt(sandbox_id, spawner, entry, cmd_id, meta, history))
            except Exception:
                log.exception("sandbox %s: cannot take over kept command %s", sandbox_id, cmd_id)
        return found

    async def _adopt(
        self,
        sandbox_id: str,
        spawner: _spawner.Spawner,
        entry: _spawner.Kept,
        cmd_id: str,
        meta: dict[str, object],
        history: int,
    ) -> KeptCommand:
        files = self._kept_files(sandbox_id, cmd_id)
        cgroup = _cgroups.command_cgroup(_spec.cgroup_parent(sandbox_id), cmd_id)
        sizes = []
        for path in (files.stdout, files.stderr):
            try:
                sizes.append(path.stat().st_size)
            except FileNotFoundError:
                sizes.append(0)
        # The most recent output of both streams, as much as ``history`` allows (stderr gets at
        # most half unless stdout needs less).
        history = max(0, history)
        err_take = min(sizes[1], history // 2)
        out_take = min(sizes[0], history - err_take)
        err_take = min(sizes[1], history - out_take)
        took = {
            "stdout": await _tail(files.stdout, sizes[0], out_take),
            "stderr": await _tail(files.stderr, sizes[1], err_take),
        }
        proc = KeptProcess(cgroup, spawner, entry.id, files)
        with contextlib.suppress(OSError, ValueError, IndexError):
            proc.pid = _cgroups.pids(cgroup)[0]
        await proc._connect_kept(
            entry.stdout, entry.stderr, entry.stdin, ((sizes[0], sizes[0]), (sizes[1], sizes[1]))
        )
        if entry.status is not None:
            proc._exited(entry.status)
        else:
            spawner.adopt(entry.id, proc._exited)
        return KeptCommand(str(meta["keep"]), proc, took)

    async def _exec_pty(
        self, args: list[str], sandbox_id: str, cgroup: Path, spec_file: Path, pid_file: Path
    ) -> RuncProcess:
        """``runc exec --detach --tty``: runc passes the PTY master over a console socket.

        The socket is abstract (no path-length limit, nothing left on disk) and only a root peer
        is trusted to hand us a terminal.
        """
        loop = asyncio.get_running_loop()
        name = f"hutch-console-{uuid.uuid4().hex}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        master = -1
        try:
            listener.bind("\0" + name)
            listener.listen(1)
            listener.setblocking(False)
            try:
                self._private_keyring()
                runc = await asyncio.create_subprocess_exec(
                    self._runc_bin,
                    *args,
                    "--detach",
                    "--tty",
                    "--console-socket",
                    "@" + name,
                    sandbox_id,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                )
            except OSError as exc:
                raise SpawnError(f"could not start runc: {exc}") from exc
            accept = asyncio.ensure_future(loop.sock_accept(listener))
            exited = asyncio.ensure_future(runc.communicate())
            try:
                await asyncio.wait(
                    [accept, exited], return_when=asyncio.FIRST_COMPLETED, timeout=30
                )
            finally:
                if not accept.done():
                    accept.cancel()
            if accept.done() and not accept.cancelled() and accept.exception() is None:
                conn, _ = accept.result()
                with conn:
                    check_peer_is_root(conn)
                    conn.setblocking(True)
                    conn.settimeout(10)
                    _msg, fds, _flags, _addr = await asyncio.to_thread(
                        socket.recv_fds, conn, 1024, 1
                    )
                if not fds:
                    raise SpawnError("runc sent no terminal over the console socket")
                master = fds[0]
                for extra in fds[1:]:
                    os.close(extra)
            _out, err = await exited
            if runc.returncode != 0 or master < 0:
                raise SpawnError(
                    (err or b"").decode(errors="replace").strip()
                    or f"runc exec failed ({runc.returncode})"
                )
            proc = PtyProcess(cgroup, spec_file, pid_file)
            await proc._connect_pty(master)
            master = -1
            proc._adopt(0)
            return proc
        except BaseException:
            if master >= 0:
                os.close(master)
            _cgroups.remove_if_empty(cgroup)
            raise
        finally:
            listener.close()
