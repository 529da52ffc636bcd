"""WebSocket upgrades on the data plane, one place for every route that takes one.

A refused upgrade is answered with an HTTP status and the usual error envelope (spec §4.1, §6.1)
instead of a bare 403, so SDKs can show the server's own words. The exec and tunnel sockets also
share their accept path: authenticate, find the ready sandbox, accept, and stay in
``svc.sockets`` while served, so that shutdown can close them (``_ws_exec.close_all``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import WebSocket

from hutch.server._dataplane import ready_sandbox
from hutch.server._deps import Services, authenticate
from hutch.server._errors import ApiError, error_response
from hutch.server._logs import note_workspace
from hutch.store import Sandbox

#: Serves one accepted socket to a sandbox; returns when the socket is done with.
SocketHandler = Callable[[Services, Sandbox], Awaitable[None]]


async def refuse(ws: WebSocket, exc: ApiError) -> None:
    """Refuse the upgrade of ``ws`` with ``exc``'s status and envelope."""
    await ws.send_denial_response(error_response(exc.wire))


async def serve_sandbox_socket(
    ws: WebSocket, sandbox_id: str, handler: SocketHandler, *, cookies: bool
) -> None:
    """Upgrade ``ws`` to a socket on the ready sandbox ``sandbox_id`` and run ``handler``.

    Refuses the upgrade (see :func:`refuse`) when the caller is not authenticated or the sandbox
    is not theirs or not ready. ``cookies`` admits the web UI's session cookie besides
    ``X-Api-Key`` (the terminal uses ``/execute/ws``; tunnels are for programs only).
    """
    svc: Services = ws.app.state.services
    try:
        who = authenticate(ws) if cookies else svc.keys.authenticate(ws.headers.get("x-api-key"))
        note_workspace(who.workspace_id)
        row = await ready_sandbox(svc, who, sandbox_id)
    except ApiError as exc:
        await refuse(ws, exc)
        return
    await ws.accept()
    svc.sockets.add(ws)
    try:
        await handler(svc, row)
    finally:
        svc.sockets.discard(ws)
