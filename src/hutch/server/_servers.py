"""Running the API listener and the service-URL listener in one process and one event loop.

Both serve the same application; only the API listener runs its lifespan (start-up and
shutdown of the sandbox manager) and handles signals. On SIGINT/SIGTERM the open SSE command
streams are told ``ServerShuttingDown`` first (uvicorn waits for open responses before the
lifespan shutdown, so a later close would come only after their time bound), then both
listeners stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

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


async def _serve(api: _ApiServer, service: _ServiceServer, sock: socket.socket) -> None:
    side = asyncio.create_task(service.serve(sockets=[sock]), name="service-listener")
    try:
        await api.serve()
    finally:
        service.should_exit = True
        with contextlib.suppress(Exception):
            await side


def run_servers(api: uvicorn.Config, service: uvicorn.Config, sock: socket.socket) -> None:
    """Serve ``api`` on its host and port and ``service`` on the bound socket ``sock``."""
    host, port = sock.getsockname()[:2]
    print(f"hutch: service URLs are served on {host}:{port}", flush=True)
    asyncio.run(_serve(_ApiServer(api), _ServiceServer(service), sock))
