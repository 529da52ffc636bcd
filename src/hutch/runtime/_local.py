"""A :class:`Process` on the host, without a container: for tests of what sits above the seam.

The command runs in a new session (``start_new_session=True``). When the cgroup v1 freezer is
writable (root), the command first joins its own freezer cgroup
``/sys/fs/cgroup/freezer/hutch-local/<id>`` and only then execs, so every process of its tree,
including children that called ``setsid`` or double-forked, is in it and :meth:`kill` reaches
them all (freeze, SIGKILL every member, thaw: see :mod:`hutch.runtime.runc._cgroups`). Without
the freezer, :meth:`kill` signals the process group, which ``setsid`` children escape.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from hutch.runtime._interface import Process, SpawnError
from hutch.runtime.runc import _cgroups

#: Freezer cgroup (under ``/sys/fs/cgroup/freezer``) that holds one child cgroup per process.
CGROUP_PARENT = "hutch-local"
#: The command writes its own pid into its cgroup, then execs: nothing it starts can be outside.
_JOIN_CGROUP = 'echo $$ > "$0" && exec "$@"'


def freezer_available() -> bool:
    """True when per-process freezer cgroups can be made here (cgroup v1, root)."""
    return _cgroups.FREEZER.is_dir() and os.access(_cgroups.FREEZER, os.W_OK)


def _same(protocol: asyncio.StreamReaderProtocol) -> asyncio.StreamReaderProtocol:
    return protocol


class LocalProcess(Process):
    """A host process with pipes for stdin, stdout and stderr; create it with :meth:`spawn`.

    :meth:`wait` answers 128+N when the process was killed by signal N. :meth:`close` kills
    whatever is left of the tree (a host process has no sandbox to outlive it), removes the
    cgroup and closes the pipes.
    """

    def __init__(self, proc: asyncio.subprocess.Process, cgroup: Path | None) -> None:
        self._proc = proc
        self._cgroup = cgroup
        self._transports: list[asyncio.BaseTransport] = []
        self.pid = proc.pid
        self.stderr = None
        self.stdin = None

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        use_cgroup: bool | None = None,
        limit: int = 64 * 1024,
    ) -> Self:
        """Start ``argv``. ``use_cgroup=None`` uses the freezer when :func:`freezer_available`.

        ``limit`` is the stream readers' buffer limit: asyncio stops reading a pipe once twice
        that much is buffered, so it bounds what is read ahead of the consumer.
        """
        if not argv:
            raise SpawnError("empty command")
        if use_cgroup is None:
            use_cgroup = freezer_available()
        cgroup: Path | None = None
        args = list(argv)
        if use_cgroup:
            parent = _cgroups.FREEZER / CGROUP_PARENT
            parent.mkdir(exist_ok=True)
            cgroup = _cgroups.command_cgroup(CGROUP_PARENT, uuid.uuid4().hex)
            _cgroups.create(cgroup)
            args = ["/bin/sh", "-c", _JOIN_CGROUP, str(cgroup / "cgroup.procs"), *args]
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        ours = [os.fdopen(out_r, "rb", 0), os.fdopen(err_r, "rb", 0), os.fdopen(in_w, "wb", 0)]
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *args,
                    stdin=in_r,
                    stdout=out_w,
                    stderr=err_w,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    start_new_session=True,
                )
            finally:
                for fd in (in_r, out_w, err_w):
                    os.close(fd)
        except OSError as exc:
            for f in ours:
                f.close()
            if cgroup is not None:
                _cgroups.remove_if_empty(cgroup)
            raise SpawnError(f"could not start {argv[0]}: {exc}") from exc
        self = cls(proc, cgroup)
        await self._connect(*ours, limit=limit)
        return self

    async def _connect(self, out: object, err: object, in_: object, *, limit: int) -> None:
        loop = asyncio.get_running_loop()
        readers = []
        for pipe in (out, err):
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            transport, _ = await loop.connect_read_pipe(functools.partial(_same, protocol), pipe)
            self._transports.append(transport)
            readers.append(reader)
        self.stdout, self.stderr = readers
        proto = asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), loop=loop)
        wtransport, _ = await loop.connect_write_pipe(functools.partial(_same, proto), in_)
        self._transports.append(wtransport)
        self.stdin = asyncio.StreamWriter(wtransport, proto, None, loop)

    def members(self) -> list[int]:
        """Pids of the tree still alive (only with a cgroup; else just the main process)."""
        if self._cgroup is not None:
            return _cgroups.pids(self._cgroup)
        return [self.pid] if self._proc.returncode is None else []

    async def wait(self) -> int:
        code = await self._proc.wait()
        return 128 - code if code < 0 else code

    async def kill(self) -> None:
        # The main process first: right after spawn it may not have joined its cgroup yet, but
        # until it has, it cannot have started anything (the wrapper forks nothing before it
        # joins). Not reaped yet (returncode None), so the pid is still ours.
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self._cgroup is not None:
            await _cgroups.kill_all(self._cgroup)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    async def close(self) -> None:
        if self._proc.returncode is None:
            await self.kill()
            await self._proc.wait()
        if self._cgroup is not None:
            await _cgroups.kill_all(self._cgroup)
            with contextlib.suppress(OSError):
                _cgroups.remove_if_empty(self._cgroup)
        for transport in self._transports:
            transport.close()
