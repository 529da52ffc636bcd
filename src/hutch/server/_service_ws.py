"""The WebSocket relay of service URLs (see :mod:`._service`): one WebSocket to a service.

**WebSocket** (:class:`_WsRelay`): an upgrade on the same paths is relayed to a WebSocket
connection to the service (websockets' sans-I/O client over the socket from ``connect``), message
by message, text and binary, subprotocol negotiated end to end, close codes passed on (codes that
may not go on the wire become 1000, or 1014 when the service vanished). One message per direction
is in flight (at most :data:`MAX_WS_MESSAGE` bytes); at most :data:`MAX_WEBSOCKETS` per sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

from fastapi import WebSocket
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Response as WsResponse
from websockets.protocol import State
from websockets.uri import parse_uri

from hutch.protocol._errors import ErrorType
from hutch.server._deps import Services
from hutch.server._errors import ApiError
from hutch.server._service_http import CHUNK, Route
from hutch.store import Sandbox

log = logging.getLogger("hutch.server")

#: Seconds a service may take to answer a WebSocket handshake (else 504).
HANDSHAKE_TIMEOUT: Final = 30.0
#: Largest WebSocket message relayed, either way (the server's own limit for incoming messages).
MAX_WS_MESSAGE: Final = 16 * 1024 * 1024
#: Seconds one relayed WebSocket message may take to be taken by the other side.
WS_SEND_TIMEOUT: Final = 60.0
#: Close codes that may be sent in a close frame (RFC 6455 §7.4); others are replaced.
_SENDABLE_CLOSE = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)})
_CLOSE_NORMAL: Final = 1000
_CLOSE_GOING_AWAY: Final = 1001
_CLOSE_INVALID_DATA: Final = 1007
_CLOSE_BAD_GATEWAY: Final = 1014


async def _touch(svc: Services, sandbox_id: str) -> None:
    try:
        await svc.manager.touch(sandbox_id)
    except Exception:  # activity bookkeeping must not break a connection
        log.warning("could not record service activity for %s", sandbox_id, exc_info=True)


def _sendable(code: int | None, fallback: int) -> int:
    return code if code is not None and code in _SENDABLE_CLOSE else fallback


class _WsRelay:
    """One WebSocket relayed between a client and the service (see the module docstring)."""

    def __init__(
        self,
        ws: WebSocket,
        svc: Services,
        row: Sandbox,
        proto: ClientProtocol,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.ws = ws
        self.svc = svc
        self.row = row
        self.proto = proto
        self.reader = reader
        self.writer = writer
        #: Fragments of the message being received from the service.
        self._parts: list[bytes] = []
        self._opcode: Opcode | None = None

    async def flush(self) -> None:
        for data in self.proto.data_to_send():
            if data:
                self.writer.write(data)
            elif self.writer.can_write_eof():
                self.writer.write_eof()
        await self.writer.drain()

    async def run(self, pending: list[Any]) -> None:
        """Relay until either side closes; ``pending`` are events that came with the handshake."""
        tasks: list[asyncio.Task[None]] = []

        async def side(work: Any) -> None:
            try:
                await work
            finally:  # either side ending ends the other
                for task in tasks:
                    if task is not asyncio.current_task():
                        task.cancel()

        async with asyncio.TaskGroup() as tg:
            tasks.append(tg.create_task(side(self._from_service(pending))))
            tasks.append(tg.create_task(side(self._from_client())))

    async def _from_client(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                code = int(message.get("code") or _CLOSE_NORMAL)
                with contextlib.suppress(InvalidState, OSError):
                    self.proto.send_close(
                        _sendable(code, _CLOSE_GOING_AWAY), str(message.get("reason") or "")
                    )
                    await self.flush()
                return
            text = message.get("text")
            try:
                if text is not None:
                    self.proto.send_text(text.encode())
                else:
                    self.proto.send_binary(message.get("bytes") or b"")
            except InvalidState:
                return  # the service is closing: its close frame ends the relay
            await self.flush()
            await _touch(self.svc, self.row.id)

    async def _from_service(self, pending: list[Any]) -> None:
        events = pending
        while True:
            for event in events:
                if isinstance(event, Frame) and await self._frame(event):
                    await self.flush()  # the echo of the service's close
                    return
            await self.flush()  # pongs
            if self.proto.state is State.CLOSED or self.proto.parser_exc is not None:
                # The service broke the protocol (a message too big, a bad frame): the protocol
                # told it why; the client gets the same code.
                sent = self.proto.close_sent
                await self._close_client(
                    _sendable(sent.code if sent else None, _CLOSE_BAD_GATEWAY),
                    "the service's connection failed",
                )
                return
            data = await self.reader.read(CHUNK)
            if data:
                self.proto.receive_data(data)
            else:
                self.proto.receive_eof()
                if self.proto.close_rcvd is None:
                    await self._close_client(_CLOSE_BAD_GATEWAY, "the service went away")
                    return
            events = self.proto.events_received()

    async def _frame(self, frame: Frame) -> bool:
        """Handle one frame from the service; True once the service closed."""
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self._opcode = frame.opcode
            self._parts = [bytes(frame.data)]
        elif frame.opcode is Opcode.CONT:
            self._parts.append(bytes(frame.data))
        elif frame.opcode is Opcode.CLOSE:
            close = self.proto.close_rcvd
            code = close.code if close is not None else _CLOSE_NORMAL
            await self._close_client(
                _sendable(code, _CLOSE_NORMAL), close.reason if close is not None else ""
            )
            return True
        else:
            return False  # PING (answered by the protocol), PONG
        if frame.fin:
            data = b"".join(self._parts)
            self._parts = []
            async with asyncio.timeout(WS_SEND_TIMEOUT):
                if self._opcode is Opcode.TEXT:
                    try:
                        text = data.decode()
                    except UnicodeDecodeError:
                        with contextlib.suppress(InvalidState):
                            self.proto.send_close(_CLOSE_INVALID_DATA, "invalid UTF-8")
                        await self._close_client(
                            _CLOSE_INVALID_DATA, "invalid UTF-8 from the service"
                        )
                        return True
                    await self.ws.send_text(text)
                else:
                    await self.ws.send_bytes(data)
            await _touch(self.svc, self.row.id)
        return False

    async def _close_client(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.ws.close(code, reason[:120])


async def _ws_handshake(
    ws: WebSocket, route: Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[ClientProtocol, list[Any]]:
    """Open the WebSocket to the service; its protocol and the events after the handshake.
    Raises :class:`ApiError` (502, 504) when the service does not take it."""
    subprotocols = list(ws.scope.get("subprotocols") or [])
    proto = ClientProtocol(
        parse_uri(f"ws://127.0.0.1:{route.port}/"),
        origin=None,
        subprotocols=subprotocols or None,
        max_size=MAX_WS_MESSAGE,
    )
    request = proto.connect()
    request.path = route.target(ws.scope).decode("latin-1")
    ours = {k.lower(): v for k, v in request.headers.raw_items() if k.lower() != "host"}
    headers = Headers()
    for raw_name, raw_value in route.request_headers(ws.scope["headers"], websocket=True):
        headers[raw_name.decode("latin-1")] = raw_value.decode("latin-1")
    origin = ws.headers.get("origin")
    if origin is not None:  # the browser's origin: the service may check it against Host
        headers["Origin"] = origin
    for key, text in ours.items():
        headers[key] = text
    request.headers = headers
    proto.send_request(request)
    port, name = route.port, route.sandbox_id
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            for data in proto.data_to_send():
                writer.write(data)
            await writer.drain()
            while True:
                data = await reader.read(CHUNK)
                if data:
                    proto.receive_data(data)
                else:
                    proto.receive_eof()
                events = proto.events_received()
                if events:
                    break
                if not data:
                    raise ConnectionResetError("closed during the handshake")
    except TimeoutError as exc:
        raise ApiError(
            ErrorType.TIMEOUT,
            f"The service on port {port} in sandbox '{name}' did not answer the WebSocket "
            f"handshake within {HANDSHAKE_TIMEOUT:.0f} s",
            status=504,
        ) from exc
    except OSError as exc:
        raise ApiError(
            ErrorType.NOT_READY,
            f"The service on port {port} in sandbox '{name}' closed the connection during the "
            "WebSocket handshake",
            status=502,
        ) from exc
    response = events[0]
    if proto.handshake_exc is not None or not isinstance(response, WsResponse):
        status = response.status_code if isinstance(response, WsResponse) else None
        raise ApiError(
            ErrorType.NOT_READY,
            f"The service on port {port} in sandbox '{name}' refused the WebSocket"
            + (f" (HTTP {status})" if status else f": {proto.handshake_exc}"),
            status=502,
        )
    return proto, events[1:]
