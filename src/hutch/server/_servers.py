"""Running the API listener and the service-URL listener in one process and one event loop.

Both serve the same application; only the API listener runs its lifespan (start-up and
shutdown of the sandbox manager) and handles signals. On SIGINT/SIGTERM the open SSE command
streams are told ``ServerShuttingDown`` first (uvicorn waits for open responses before the
lifespan shutdown, so a later close would come only after their time bound), then both
listeners stop.

Both listening sockets are bound before the application starts (``hutch serve`` binds them),
and the data dir is locked before that: a server that cannot have its ports or its data dir
exits before its lifespan sets anything up, so it never runs a shutdown that would tear down
(unmount, delete) what another server on the same host set up and uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import uvicorn

log = logging.getLogger("hutch.server")


class _ApiServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        from hutch.server import _sse_exec

        app = self.config.app
        services = getattr(getattr(app, "state", None), "services", None)
        if services is not None:
            with contextlib.suppress(Exception):
                await _sse_exec.close_all(services)
        await super().shutdown(sockets)


class _ServiceServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The API listener owns the signals; this one stops when it does.
        yield


class DataDirBusy(Exception):
    """Another process holds the data dir's lock."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take ``<data_dir>/lock`` (``flock``, exclusive) for this process's life; returns the open
    file, whose closing (or the process's end, however it ends) releases the lock. The file
    names the holder's pid, for the message a second server prints.

    Raises:
        DataDirBusy: another process holds it; the message names the data dir and its pid.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    lock = os.fdopen(fd, "r+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise DataDirBusy(
            f"another hutch server (pid {holder}) is using the data dir {data_dir}; stop it "
            "first, or give this one its own --data-dir"
        ) from None
    except BaseException:
        lock.close()
        raise
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


async def _serve(
    api: _ApiServer, service: _ServiceServer, api_sock: socket.socket, sock: socket.socket
) -> None:
    side = asyncio.create_task(service.serve(sockets=[sock]), name="service-listener")
    try:
        await api.serve(sockets=[api_sock])
    finally:
        service.should_exit = True
        with contextlib.suppress(Exception):
            await side


def run_servers(
    api: uvicorn.Config, service: uvicorn.Config, api_sock: socket.socket, sock: socket.socket
) -> None:
    """Serve ``api`` on the bound socket ``api_sock`` and ``service`` on ``sock``."""
    host, port = sock.getsockname()[:2]
    print(f"hutch: service URLs are served on {host}:{port}", flush=True)
    asyncio.run(_serve(_ApiServer(api), _ServiceServer(service), api_sock, sock))
