"""``/tunnel``: TCP tunnels into a sandbox, yamux over a WebSocket (spec §6).

One WebSocket carries one yamux session in which this side is the *server*: it never opens
streams. Each stream the client opens starts with a 3-byte connect header; the server dials
``127.0.0.1:<port>`` inside the sandbox's network namespace (:meth:`Runtime.connect`, so the
host's own loopback is out of reach), answers one status byte (§6.4) and then copies bytes both
ways. The protocol logic is :class:`hutch.protocol._yamux.Session`, driven by the
:class:`~hutch.protocol._yamux_driver.YamuxDriver` the SDK uses too; this module adapts the
WebSocket to it and serves each stream: the handler task the driver runs per stream owns its
target socket and splices it with the stream.

Bounds, in bytes, per tunnel (house-style rule 10):

* Client → target: per stream, what the client sent and the target has not taken yet, at most
  the 256 KiB window (the session only re-opens it once bytes are written to the socket, and a
  client sending beyond it is a protocol error that ends the tunnel with GO_AWAY). At most
  :data:`MAX_STREAMS` streams, so 64 MiB for a tunnel whose targets all stop reading.
* Target → client: a socket is read only while the stream's send window is open, at most
  :data:`~hutch.protocol._yamux_driver.READ_CHUNK` at a time; a client that stops reading stalls
  only its own stream, and its target's socket buffer fills (TCP backpressure on the service in
  the sandbox).
* Output: :data:`~hutch.protocol._yamux_driver.MAX_OUTPUT` of queued frames plus one message in
  flight. The reader stops reading the WebSocket while control replies (PING ACKs, RSTs) pile up
  beyond :data:`OUTPUT_LIMIT`, and a client that takes no message for :data:`SEND_TIMEOUT`
  seconds is dropped.

Refusals follow §6.4: status ``0x03`` (header version), ``0x01`` (port 0), ``0x02`` (nothing
listens, or the sandbox stopped), each followed by FIN. A stream that sends no header within
:data:`HEADER_TIMEOUT` seconds is reset. GO_AWAY from the client, a protocol error, or the
WebSocket closing tears down every stream and its target connection (§6.4 step 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from hutch.protocol._yamux import (
    STREAM_HEADER_SIZE,
    StreamHeaderError,
    StreamStatus,
    parse_stream_header,
)
from hutch.protocol._yamux_driver import (
    MAX_OUTPUT,
    READ_CHUNK,
    Stream,
    TransportClosed,
    YamuxDriver,
    splice,
)
from hutch.runtime._interface import SandboxNotFound
from hutch.server._deps import Services
from hutch.server._metrics import Metrics
from hutch.server._ws import serve_sandbox_socket
from hutch.store import Sandbox

log = logging.getLogger("hutch.server")
router = APIRouter()

#: Streams open at once per tunnel; further SYNs are refused with RST (the session lives on).
MAX_STREAMS: Final = 256
#: Queued output beyond which the reader stops reading the WebSocket until the flusher catches up.
OUTPUT_LIMIT: Final = 2 * MAX_OUTPUT
#: Seconds a stream may take to send its 3-byte connect header.
HEADER_TIMEOUT: Final = 30.0
#: Seconds a refused stream waits for the client's FIN before it is reset.
REFUSED_LINGER: Final = 10.0
#: Seconds one WebSocket message may take to be accepted by the transport.
SEND_TIMEOUT: Final = 60.0
CLOSE_NORMAL: Final = 1000


@router.websocket("/dp/{sandbox_id}/tunnel")
async def tunnel_ws(ws: WebSocket, sandbox_id: str) -> None:
    async def serve(svc: Services, row: Sandbox) -> None:
        tunnel = _Tunnel(ws, svc, row)
        try:
            await tunnel.driver.run()
        finally:
            await tunnel.driver.transport.close()

    await serve_sandbox_socket(ws, sandbox_id, serve, cookies=False)


class _WebSocketTransport:
    """A Starlette WebSocket as the driver's message transport (text frames count as their
    UTF-8 bytes, §6.2); counts the bytes each way."""

    def __init__(self, ws: WebSocket, metrics: Metrics) -> None:
        self.ws = ws
        self.metrics = metrics

    async def send(self, data: bytes) -> None:
        try:
            await self.ws.send_bytes(data)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise TransportClosed from exc
        self.metrics.tunnel("out", len(data))

    async def recv(self) -> bytes:
        try:
            message = await self.ws.receive()
        except (WebSocketDisconnect, RuntimeError) as exc:
            raise TransportClosed from exc
        if message["type"] == "websocket.disconnect":
            raise TransportClosed
        data = message.get("bytes")
        if data is None:
            data = (message.get("text") or "").encode()
        self.metrics.tunnel("in", len(data))
        return bytes(data)

    async def close(self) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):  # the peer may be gone already
                await self.ws.close(CLOSE_NORMAL)


class _StreamEnded(Exception):
    """The client half-closed a stream before sending its connect header."""


class _Tunnel:
    """The streams of one tunnel WebSocket: the shared yamux driver, and a dial per stream."""

    def __init__(self, ws: WebSocket, svc: Services, row: Sandbox) -> None:
        self.svc = svc
        self.row = row
        self.driver = YamuxDriver(
            _WebSocketTransport(ws, svc.manager.metrics),
            client=False,
            on_stream=self._serve_stream,
            logger=log,
            label=f"tunnel to {row.id}",
            max_streams=MAX_STREAMS,
            output_limit=OUTPUT_LIMIT,
            send_timeout=SEND_TIMEOUT,
        )

    async def _serve_stream(self, stream: Stream) -> None:
        """One stream, start to end (the driver resets what is left open when it returns)."""
        try:
            async with asyncio.timeout(HEADER_TIMEOUT):
                port = await self._read_header(stream)
        except StreamHeaderError as exc:
            await self._refuse(stream, exc.status, str(exc))
            return
        except (TimeoutError, _StreamEnded):
            return  # reset by the driver
        try:
            sock = await self.svc.runtime.connect(self.row.id, port)
        except (OSError, SandboxNotFound) as exc:
            await self._refuse(stream, StreamStatus.DIAL_FAILED, f"dial {port}: {exc}")
            return
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=READ_CHUNK)
        except BaseException:
            sock.close()
            raise
        try:
            await stream.send_all(bytes((StreamStatus.OK,)))
            await self._touch()
        except BaseException:
            writer.transport.abort()
            raise
        failure = await splice(stream, reader, writer)
        if failure is not None:
            log.debug("tunnel stream %d to port %d aborted: %r", stream.stream_id, port, failure)

    async def _read_header(self, stream: Stream) -> int:
        while stream.inbox_bytes < STREAM_HEADER_SIZE:
            if stream.eof:
                raise _StreamEnded
            await stream.wait_changed()
        header = stream.take(STREAM_HEADER_SIZE)
        stream.consumed(len(header))
        return parse_stream_header(header)

    async def _refuse(self, stream: Stream, status: StreamStatus, why: str) -> None:
        """Answer a non-OK status, then FIN (§6.4 step 6); wait a little for the client's FIN."""
        log.debug("tunnel stream %d refused (%s): %s", stream.stream_id, status.name, why)
        await stream.send_all(bytes((status,)))
        stream.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REFUSED_LINGER):
                while not stream.eof:
                    # Whatever the client sent meanwhile is dropped, and its window returned.
                    stream.consumed(len(stream.take()))
                    await stream.wait_changed()

    async def _touch(self) -> None:
        try:
            await self.svc.manager.touch(self.row.id)
        except Exception:  # activity bookkeeping must not break a connection
            log.warning("could not record tunnel activity for %s", self.row.id, exc_info=True)
