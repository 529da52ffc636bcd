"""``/tunnel``: TCP tunnels into a sandbox, yamux over a WebSocket (spec §6).

One WebSocket carries one yamux session in which this side is the *server*: it never opens
streams. Each stream the client opens starts with a 3-byte connect header; the server dials
``127.0.0.1:<port>`` inside the sandbox's network namespace (:meth:`Runtime.connect`, so the
host's own loopback is out of reach), answers one status byte (§6.4) and then copies bytes both
ways. All protocol logic is in :class:`hutch.protocol._yamux.Session`; this module is its asyncio
driver.

Tasks, all in one TaskGroup per tunnel: a reader (WebSocket → session → events), a flusher
(session output → WebSocket, at most :data:`MAX_MESSAGE` bytes per message, spec §6.2), and one
task per stream, which owns its target socket and runs its two copy directions.

Bounds, in bytes, per tunnel (house-style rule 10):

* Client → target: per stream, what the client sent and the target has not taken yet, at most
  the 256 KiB window (the session only re-opens it once bytes are written to the socket, and a
  client sending beyond it is a protocol error that ends the tunnel with GO_AWAY). At most
  :data:`MAX_STREAMS` streams, so 64 MiB for a tunnel whose targets all stop reading.
* Target → client: a socket is read only while the stream's send window is open, at most
  :data:`READ_CHUNK` at a time; a client that stops reading stalls only its own stream, and its
  target's socket buffer fills (TCP backpressure on the service in the sandbox).
* Output: :data:`MAX_OUTPUT` of queued frames plus one message in flight. The reader stops
  reading the WebSocket while control replies (PING ACKs, RSTs) pile up beyond
  :data:`OUTPUT_LIMIT`, and a client that takes no message for :data:`SEND_TIMEOUT` seconds is
  dropped.

Refusals follow §6.4: status ``0x03`` (header version), ``0x01`` (port 0), ``0x02`` (nothing
listens, or the sandbox stopped), each followed by FIN. A stream that sends no header within
:data:`HEADER_TIMEOUT` seconds is reset. GO_AWAY from the client, a protocol error, or the
WebSocket closing tears down every stream and its target connection (§6.4 step 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Final

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from hutch.protocol._yamux import (
    INITIAL_WINDOW,
    STREAM_HEADER_SIZE,
    DataReceived,
    GoAway,
    ProtocolError,
    Session,
    StreamEOF,
    StreamHeaderError,
    StreamOpened,
    StreamReset,
    StreamState,
    StreamStatus,
    WindowUpdated,
    YamuxError,
    parse_stream_header,
)
from hutch.runtime._interface import SandboxNotFound
from hutch.server._dataplane import ready_sandbox
from hutch.server._deps import Services
from hutch.server._errors import ApiError
from hutch.store import Sandbox

log = logging.getLogger("hutch.server")
router = APIRouter()

#: Largest WebSocket message sent: the client's default limit for incoming messages (§6.2).
MAX_MESSAGE: Final = 1024 * 1024
#: Streams open at once per tunnel; further SYNs are refused with RST (the session lives on).
MAX_STREAMS: Final = 256
#: Stream data the session queues for the WebSocket before ``send`` pushes back.
MAX_OUTPUT: Final = 2 * MAX_MESSAGE
#: Queued output beyond which the reader stops reading the WebSocket until the flusher catches up.
OUTPUT_LIMIT: Final = 2 * MAX_OUTPUT
#: Largest read from a target socket (also capped by the stream's send window).
READ_CHUNK: Final = INITIAL_WINDOW
#: Seconds a stream may take to send its 3-byte connect header.
HEADER_TIMEOUT: Final = 30.0
#: Seconds a refused stream waits for the client's FIN before it is reset.
REFUSED_LINGER: Final = 10.0
#: Seconds one WebSocket message may take to be accepted by the transport.
SEND_TIMEOUT: Final = 60.0
CLOSE_NORMAL: Final = 1000


@router.websocket("/dp/{sandbox_id}/tunnel")
async def tunnel_ws(ws: WebSocket, sandbox_id: str) -> None:
    svc: Services = ws.app.state.services
    try:
        who = svc.keys.authenticate(ws.headers.get("x-api-key"))
        row = await ready_sandbox(svc, who, sandbox_id)
    except ApiError as exc:
        # Refuse the upgrade with an HTTP status, in the usual envelope (as /execute/ws does).
        await ws.send_denial_response(
            JSONResponse(exc.wire.envelope(), status_code=exc.wire.status)
        )
        return
    await ws.accept()
    svc.sockets.add(ws)
    try:
        await _Tunnel(ws, svc, row).run()
    finally:
        svc.sockets.discard(ws)
        if ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):  # the peer may be gone already
                await ws.close(CLOSE_NORMAL)


class _Gone(Exception):
    """The WebSocket can no longer carry output (closed, or the client stopped reading)."""


class _StreamEnded(Exception):
    """The client half-closed a stream before sending its connect header."""


class _Channel:
    """One stream's side of the driver: received bytes waiting for the target, and wake-ups."""

    __slots__ = ("eof", "inbox", "inbox_bytes", "readable", "stream_id", "task", "writable")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.inbox: deque[bytes] = deque()
        self.inbox_bytes = 0
        self.eof = False
        #: Set when bytes or EOF arrive.
        self.readable = asyncio.Event()
        #: Set when the send window grows or queued output was taken.
        self.writable = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def take(self, limit: int | None = None) -> bytes:
        """Remove and return up to ``limit`` received bytes (all of them with None)."""
        if limit is None or limit >= self.inbox_bytes:
            data = b"".join(self.inbox)
            self.inbox.clear()
        else:
            parts: list[bytes] = []
            need = limit
            while need:
                chunk = self.inbox.popleft()
                if len(chunk) > need:
                    self.inbox.appendleft(chunk[need:])
                    chunk = chunk[:need]
                parts.append(chunk)
                need -= len(chunk)
            data = b"".join(parts)
        self.inbox_bytes -= len(data)
        return data


class _Tunnel:
    """The driver of one tunnel WebSocket (see the module docstring)."""

    def __init__(self, ws: WebSocket, svc: Services, row: Sandbox) -> None:
        self.ws = ws
        self.svc = svc
        self.row = row
        self.session = Session(client=False, max_streams=MAX_STREAMS, max_output_buffer=MAX_OUTPUT)
        self.channels: dict[int, _Channel] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._output = asyncio.Event()  # output is queued
        self._flushed = asyncio.Event()  # the flusher took output
        self._output_waiters: set[_Channel] = set()
        self._ending = False  # GO_AWAY or protocol error: read no more
        self._stopping = False  # the flusher returns once the queue is empty

    # ------------------------------------------------------------------ session

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._flush_loop())
                try:
                    await self._read_loop()
                finally:
                    for channel in list(self.channels.values()):
                        if channel.task is not None:
                            channel.task.cancel()
                    self._stopping = True
                    self._output.set()
        except* (_Gone, WebSocketDisconnect):
            pass

    async def _read_loop(self) -> None:
        while not self._ending:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:  # text frames count as their UTF-8 bytes (§6.2)
                data = (message.get("text") or "").encode()
            self.session.receive_data(data)
            self._handle_events()
            self._kick()
            # Input that only produces control replies must not outrun a client that does not
            # read them: stop reading until the flusher has caught up.
            while self.session.pending_output_bytes > OUTPUT_LIMIT:
                self._flushed.clear()
                await self._flushed.wait()

    def _handle_events(self) -> None:
        assert self._tg is not None
        for event in self.session.events():
            if isinstance(event, DataReceived):
                channel = self.channels.get(event.stream_id)
                if channel is not None:
                    channel.inbox.append(event.data)
                    channel.inbox_bytes += len(event.data)
                    channel.readable.set()
            elif isinstance(event, WindowUpdated):
                channel = self.channels.get(event.stream_id)
                if channel is not None:
                    channel.writable.set()
            elif isinstance(event, StreamOpened):
                channel = _Channel(event.stream_id)
                self.channels[event.stream_id] = channel
                channel.task = self._tg.create_task(self._serve_stream(channel))
            elif isinstance(event, StreamEOF):
                channel = self.channels.get(event.stream_id)
                if channel is not None:
                    channel.eof = True
                    channel.readable.set()
            elif isinstance(event, StreamReset):
                # Popped here too: a task cancelled before it ever ran has no finally to run.
                channel = self.channels.pop(event.stream_id, None)
                if channel is not None and channel.task is not None:
                    self._output_waiters.discard(channel)
                    channel.task.cancel()
            elif isinstance(event, GoAway):
                log.debug("tunnel to %s: client sent GO_AWAY(%d)", self.row.id, event.code)
                self._ending = True
            elif isinstance(event, ProtocolError):
                log.info("tunnel to %s: protocol error: %s", self.row.id, event.message)
                self._ending = True
            # PingReceived: the session queued the answer. StreamAccepted/PongReceived: this side
            # opens no streams and sends no pings.

    def _kick(self) -> None:
        if self.session.pending_output_bytes:
            self._output.set()

    async def _flush_loop(self) -> None:
        while True:
            if not self.session.pending_output_bytes:
                if self._stopping:
                    return
                self._output.clear()
                await self._output.wait()
                continue
            data = self.session.data_to_send(MAX_MESSAGE)
            self._flushed.set()
            for channel in self._output_waiters:
                channel.writable.set()
            self._output_waiters.clear()
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await self.ws.send_bytes(data)
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                raise _Gone from exc
            except TimeoutError as exc:
                log.info("tunnel to %s: client stopped reading; dropping it", self.row.id)
                raise _Gone from exc

    # ------------------------------------------------------------------ streams

    async def _serve_stream(self, channel: _Channel) -> None:
        """One stream, start to end; never raises except when cancelled."""
        stream_id = channel.stream_id
        try:
            try:
                async with asyncio.timeout(HEADER_TIMEOUT):
                    port = await self._read_header(channel)
            except StreamHeaderError as exc:
                await self._refuse(channel, exc.status, str(exc))
                return
            except (TimeoutError, _StreamEnded):
                return  # reset below
            try:
                sock = await self.svc.runtime.connect(self.row.id, port)
            except (OSError, SandboxNotFound) as exc:
                await self._refuse(channel, StreamStatus.DIAL_FAILED, f"dial {port}: {exc}")
                return
            try:
                reader, writer = await asyncio.open_connection(sock=sock, limit=READ_CHUNK)
            except BaseException:
                sock.close()
                raise
            clean = False
            try:
                await self._send_all(channel, bytes((StreamStatus.OK,)))
                await self._touch()
                # Either direction failing (target reset, client RST) ends both.
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._to_target(channel, writer))
                    tg.create_task(self._to_client(channel, reader))
                clean = True
            except* (OSError, YamuxError) as group:
                log.debug("tunnel stream %d to port %d aborted: %r", stream_id, port, group)
            finally:
                # Both directions ended with FIN: close politely; otherwise reset the target too.
                if clean:
                    writer.close()
                else:
                    writer.transport.abort()
        except YamuxError:
            pass  # the stream or the session ended under us (RST, protocol error)
        except Exception:
            log.exception("tunnel stream %d failed", stream_id)
        finally:
            # RST whatever is still open (no-op after a clean FIN both ways or a client RST).
            self.session.reset_stream(stream_id)
            self._kick()
            self.channels.pop(stream_id, None)
            self._output_waiters.discard(channel)

    async def _read_header(self, channel: _Channel) -> int:
        while channel.inbox_bytes < STREAM_HEADER_SIZE:
            if channel.eof:
                raise _StreamEnded
            channel.readable.clear()
            await channel.readable.wait()
        header = channel.take(STREAM_HEADER_SIZE)
        self.session.consumed(channel.stream_id, len(header))
        self._kick()
        return parse_stream_header(header)

    async def _refuse(self, channel: _Channel, status: StreamStatus, why: str) -> None:
        """Answer a non-OK status, then FIN (§6.4 step 6); wait a little for the client's FIN."""
        log.debug("tunnel stream %d refused (%s): %s", channel.stream_id, status.name, why)
        await self._send_all(channel, bytes((status,)))
        self.session.close_stream(channel.stream_id)
        self._kick()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REFUSED_LINGER):
                while not channel.eof:
                    # Whatever the client sent meanwhile is dropped, and its window returned.
                    self.session.consumed(channel.stream_id, len(channel.take()))
                    self._kick()
                    channel.readable.clear()
                    await channel.readable.wait()

    async def _touch(self) -> None:
        try:
            await self.svc.manager.touch(self.row.id)
        except Exception:  # activity bookkeeping must not break a connection
            log.warning("could not record tunnel activity for %s", self.row.id, exc_info=True)

    async def _send_all(self, channel: _Channel, data: bytes) -> None:
        """Queue ``data`` on the stream, waiting for window and output room as needed."""
        view = memoryview(data)
        while view:
            sent = self.session.send(channel.stream_id, view)
            if sent:
                view = view[sent:]
                self._output.set()
                continue
            channel.writable.clear()
            if self.session.send_window(channel.stream_id) > 0:
                # The window is open: the output queue is full. The flusher wakes us.
                self._output_waiters.add(channel)
            await channel.writable.wait()

    async def _to_target(self, channel: _Channel, writer: asyncio.StreamWriter) -> None:
        """Client → target: write, drain, then report consumed (which re-opens the window)."""
        while True:
            if channel.inbox_bytes:
                data = channel.take()
                writer.write(data)
                await writer.drain()
                self.session.consumed(channel.stream_id, len(data))
                self._kick()
            elif channel.eof:
                # Half-close the target (§6.4 step 9): it may still answer.
                if writer.can_write_eof():
                    writer.write_eof()
                return
            else:
                channel.readable.clear()
                await channel.readable.wait()

    async def _to_client(self, channel: _Channel, reader: asyncio.StreamReader) -> None:
        """Target → client, never reading more than the client's window admits (§6.4 step 7)."""
        stream_id = channel.stream_id
        while True:
            window = self.session.send_window(stream_id)
            if window <= 0:
                channel.writable.clear()
                await channel.writable.wait()
                continue
            data = await reader.read(min(window, READ_CHUNK))
            if not data:
                if self.session.stream_state(stream_id) in (
                    StreamState.OPEN,
                    StreamState.REMOTE_CLOSED,
                ):
                    self.session.close_stream(stream_id)  # FIN: the target is done
                    self._kick()
                return
            await self._send_all(channel, data)
