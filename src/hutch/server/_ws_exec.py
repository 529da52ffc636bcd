"""``/execute/ws`` (spec §4, with the newest SDK's deltas of §9.1).

One WebSocket is one client attached to one command session: the first message starts a command
(``execute``; a known client-supplied ``command_id`` attaches instead of spawning twice) or
re-attaches to one (``reconnect`` from byte offsets). The session outlives the socket.

Close codes: 1000 only after ``exit`` or ``error``; 1013 for a client too slow to keep up (it
resumes from its offsets); 1012 when the server shuts down; 1008 for a protocol violation after
the first message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from hutch.protocol import _exec as proto
from hutch.protocol._errors import ErrorType
from hutch.server._commands import CommandRequest, recover_commands, start_command
from hutch.server._deps import Services
from hutch.server._errors import ApiError
from hutch.server._metrics import Metrics
from hutch.server._ws import serve_sandbox_socket
from hutch.sessions import (
    CommandNotFound,
    CommandSession,
    SessionError,
    SessionExpired,
    SlowConsumer,
    Subscription,
)
from hutch.sessions import Error as SessionErrorEvent
from hutch.sessions import Exit as SessionExit
from hutch.sessions import Output as SessionOutput
from hutch.store import Sandbox

log = logging.getLogger("hutch.server")
router = APIRouter()

#: The client sends its first message right after the upgrade; don't hold a socket forever.
FIRST_MESSAGE_TIMEOUT = 30.0
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_RESTART, CLOSE_TRY_LATER = 1000, 1008, 1012, 1013


async def _send(ws: WebSocket, msg: proto.ServerMessage) -> None:
    await ws.send_text(proto.encode_server_message(msg))


async def _fail(ws: WebSocket, error_type: str, message: str) -> None:
    """Send a terminal ``error`` and close 1000 (spec §4.5)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await _send(ws, proto.Error(error_type=error_type, error=message))
        await ws.close(CLOSE_NORMAL)


@router.websocket("/dp/{sandbox_id}/execute/ws")
async def execute_ws(ws: WebSocket, sandbox_id: str) -> None:
    async def serve(svc: Services, row: Sandbox) -> None:
        with contextlib.suppress(WebSocketDisconnect):
            await _serve(ws, svc, row)

    await serve_sandbox_socket(ws, sandbox_id, serve, cookies=True)


async def _serve(ws: WebSocket, svc: Services, row: Sandbox) -> None:
    began = time.perf_counter()
    try:
        raw = await asyncio.wait_for(ws.receive(), FIRST_MESSAGE_TIMEOUT)
    except TimeoutError:
        await _fail(ws, ErrorType.COMMAND_ERROR, "No execute or reconnect message received")
        return
    if raw.get("type") == "websocket.disconnect":
        return
    try:
        first = proto.parse_client_message(raw.get("text") or raw.get("bytes") or b"", first=True)
    except proto.ExecProtocolError as exc:
        await _fail(ws, ErrorType.COMMAND_ERROR, f"Invalid first message: {exc}")
        return
    sessions = svc.sessions
    if isinstance(first, proto.Execute):
        try:
            session, created = await start_command(
                svc,
                row,
                CommandRequest(
                    command=first.command,
                    shell=first.shell,
                    env=first.env,
                    cwd=first.cwd,
                    run_config=first.run_config,
                    pty=first.pty,
                    rows=first.rows or 24,
                    cols=first.cols or 80,
                    timeout=first.timeout_seconds,
                    idle_timeout=first.idle_timeout_seconds,
                    ttl=first.ttl_seconds,
                    kill_on_disconnect=first.kill_on_disconnect,
                    command_id=first.command_id,
                ),
            )
        except ApiError as exc:
            await _fail(ws, exc.wire.error or ErrorType.COMMAND_ERROR, exc.wire.message)
            return
        if created and first.close_stdin and not first.pty:
            await session.close_stdin()
        offsets = (0, 0)
    elif isinstance(first, proto.Reconnect):
        await recover_commands(svc, row)
        try:
            session = sessions.get(row.id, first.command_id)
        except CommandNotFound:
            await _fail(ws, ErrorType.COMMAND_NOT_FOUND, f"Command not found: {first.command_id}")
            return
        except SessionExpired:
            await _fail(ws, ErrorType.SESSION_EXPIRED, f"Session expired: {first.command_id}")
            return
        offsets = (first.stdout_offset, first.stderr_offset)
    else:  # parse_client_message(first=True) admits only the two
        await _fail(ws, ErrorType.COMMAND_ERROR, "First message must be execute or reconnect")
        return
    # Attach before anything awaits, so the session cannot expire (or an idle timer of 0 fire)
    # between the lookup and the attach.
    try:
        subscription = session.attach(stdout_offset=offsets[0], stderr_offset=offsets[1])
    except SessionExpired:
        await _fail(ws, ErrorType.SESSION_EXPIRED, f"Session expired: {session.command_id}")
        return
    # `started` first, on execute and on reconnect alike (0.15 reads it as the attach ack).
    try:
        await _send(ws, proto.Started(command_id=session.command_id, pid=session.pid))
    except BaseException:
        subscription.close()
        raise
    # Two tasks owned here: whichever ends first (terminal event sent, or the client went away)
    # ends the other; both are always awaited.
    pump = asyncio.create_task(_pump(ws, subscription, svc.manager.metrics, began))
    listen = asyncio.create_task(_listen(ws, session))
    try:
        await asyncio.wait({pump, listen}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pump, listen):
            task.cancel()
        results = await asyncio.gather(pump, listen, return_exceptions=True)
        subscription.close()
    for result in results:
        if isinstance(result, Exception) and not isinstance(
            result, (WebSocketDisconnect, asyncio.CancelledError)
        ):
            raise result


async def _pump(ws: WebSocket, subscription: Subscription, metrics: Metrics, began: float) -> None:
    """Session events → frames; returns after the terminal event and the 1000 close.

    Pulling the next event after an awaited send is what marks output delivered (sessions'
    no-loss rule): what was in flight when the socket died stays for a reconnect.
    """
    try:
        async for event in subscription:
            if isinstance(event, SessionOutput):
                await _send(
                    ws, proto.Output(stream=event.stream, data=event.data, offset=event.offset)
                )
                metrics.output("ws", event.stream, len(event.data.encode()))
                continue
            if isinstance(event, SessionExit):
                await _send(ws, proto.Exit(exit_code=event.exit_code))
            elif isinstance(event, SessionErrorEvent):
                await _send(ws, proto.Error(error_type=event.error_type, error=event.message))
            await ws.close(CLOSE_NORMAL)
            metrics.exec_done("ws", time.perf_counter() - began)
            return
    except SlowConsumer:
        await ws.close(CLOSE_TRY_LATER, "client too slow; reconnect from your offsets")


async def _listen(ws: WebSocket, session: CommandSession) -> None:
    """Client frames after the first: input, close_stdin, kill, resize. Returns on disconnect."""
    while True:
        raw = await ws.receive()
        if raw.get("type") == "websocket.disconnect":
            return
        try:
            msg = proto.parse_client_message(
                raw.get("text") or raw.get("bytes") or b"", first=False
            )
        except proto.ExecProtocolError as exc:
            log.info("closing exec socket: %s", exc)
            with contextlib.suppress(RuntimeError):
                await ws.close(CLOSE_POLICY, str(exc)[:120])
            return
        if isinstance(msg, proto.Input):
            # Input for a finished command or after close_stdin has nowhere to go (§4.4 has no
            # error for it); dropping it is what a closed pipe would do.
            with contextlib.suppress(SessionError, OSError):
                await session.write_stdin(msg.data.encode())
        elif isinstance(msg, proto.CloseStdin):
            with contextlib.suppress(SessionError, OSError):
                await session.close_stdin()
        elif isinstance(msg, proto.Kill):
            with contextlib.suppress(SessionError):  # already gone: nothing left to kill
                await session.kill()
        elif isinstance(msg, proto.Resize):
            with contextlib.suppress(SessionError, ValueError):  # exited, or a bad size
                session.resize(msg.rows, msg.cols)


async def close_all(svc: Services) -> None:
    """On shutdown: close every exec socket with 1012 so clients resume elsewhere/later."""
    for ws in list(svc.sockets):
        if ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await ws.close(CLOSE_RESTART, "server restarting")
