"""The asyncio driver of a yamux :class:`~hutch.protocol._yamux.Session`, shared by server and SDK.

The session (:mod:`._yamux`) is pure state; this module does the I/O around it over any
message transport (:class:`MessageTransport`: the server adapts a Starlette WebSocket, the SDK a
``websockets`` connection, tests an in-memory pair). It imports neither, so the one driver
serves both sides of the tunnel (spec §6) and they cannot drift apart.

Tasks, all owned by :meth:`YamuxDriver.run` in one TaskGroup: a reader (transport → session →
events), a flusher (session output → transport, at most ``max_message`` bytes per message, spec
§6.2), and one task per stream the peer opens (running the ``on_stream`` handler). Streams this
side opens (:meth:`YamuxDriver.open_stream`) are driven by their caller.

Bounds, in bytes (house-style rule 10):

* Received: per stream, what the peer sent and the application has not taken yet, at most the
  stream's receive window (the session re-opens it only as :meth:`Stream.consumed` reports bytes
  taken; a peer sending beyond it is a protocol error that ends the session). At most
  ``max_streams`` streams.
* Sent: :meth:`Stream.send_all` waits for window and for output room; ``max_output`` bytes of
  queued frames plus one message in flight. The reader stops reading the transport while
  control replies (PING ACKs, RSTs) pile up beyond ``output_limit``, and a peer that takes no
  message for ``send_timeout`` seconds (when set) is dropped.

Ending: a GO_AWAY from the peer, a protocol error, or the transport closing makes the driver
*dead*: every stream is woken with a reset (its waits raise ``ConnectionResetError``), handler
tasks are cancelled, queued output is flushed and :meth:`~YamuxDriver.run` returns.
:meth:`~YamuxDriver.aclose` ends it from this side with a GO_AWAY (§6.3 step 7).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from hutch.protocol._yamux import (
    INITIAL_WINDOW,
    DataReceived,
    Event,
    GoAway,
    ProtocolError,
    Session,
    StreamEOF,
    StreamOpened,
    StreamReset,
    StreamState,
    WindowUpdated,
    YamuxError,
)

__all__ = [
    "MAX_MESSAGE",
    "MAX_OUTPUT",
    "READ_CHUNK",
    "MessageTransport",
    "Stream",
    "StreamHandler",
    "TransportClosed",
    "YamuxDriver",
    "splice",
]

#: Largest message sent: the SDK's default limit for incoming messages (§6.2).
MAX_MESSAGE: Final = 1024 * 1024
#: Stream data the session queues for the transport before writers wait.
MAX_OUTPUT: Final = 2 * MAX_MESSAGE
#: Largest read from a socket spliced with a stream (also capped by the stream's send window).
READ_CHUNK: Final = INITIAL_WINDOW
_CAN_SEND: Final = (StreamState.OPEN, StreamState.REMOTE_CLOSED)


class TransportClosed(Exception):
    """The transport can carry no more messages (closed by either side, or failed)."""


class MessageTransport(Protocol):
    """A message-oriented, reliable, ordered byte pipe (a WebSocket, or a test pair).

    ``recv`` raises :class:`TransportClosed` once the peer is gone; ``send`` raises it when the
    message cannot be delivered. ``close`` is idempotent.
    """

    async def send(self, data: bytes) -> None: ...

    async def recv(self) -> bytes: ...

    async def close(self) -> None: ...


class Stream:
    """One yamux stream as the application sees it: received bytes, and waits for room."""

    __slots__ = (
        "_driver",
        "eof",
        "inbox",
        "inbox_bytes",
        "readable",
        "reset",
        "stream_id",
        "task",
        "writable",
    )

    def __init__(self, driver: YamuxDriver, stream_id: int) -> None:
        self._driver = driver
        self.stream_id = stream_id
        self.inbox: deque[bytes] = deque()
        self.inbox_bytes = 0
        #: The peer half-closed (FIN): no bytes beyond :attr:`inbox` will come.
        self.eof = False
        #: The stream or the session is gone; waits raise ``ConnectionResetError``.
        self.reset = False
        self.readable = asyncio.Event()  # bytes, EOF or reset arrived
        self.writable = asyncio.Event()  # window grew, output was taken, or reset
        #: The handler task, for a stream the peer opened.
        self.task: asyncio.Task[None] | None = None

    def take(self, limit: int | None = None) -> bytes:
        """Remove and return up to ``limit`` received bytes (all of them with None).

        Report them with :meth:`consumed` once they are passed on, to re-open the window.
        """
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

    def consumed(self, count: int) -> None:
        """The application passed ``count`` taken bytes on: give the peer that much window back."""
        self._driver.session.consumed(self.stream_id, count)
        self._driver.kick()

    def _check(self) -> None:
        if self.reset:
            raise ConnectionResetError(errno.ECONNRESET, "tunnel stream reset")

    async def wait_changed(self) -> None:
        """Until bytes, EOF or a reset arrive; raises ``ConnectionResetError`` on reset."""
        self._check()
        self.readable.clear()
        await self.readable.wait()
        self._check()

    async def wait_readable(self) -> None:
        """Until the stream has bytes or EOF; raises ``ConnectionResetError`` on reset."""
        while not (self.inbox_bytes or self.eof):
            self._check()
            self.readable.clear()
            await self.readable.wait()

    async def wait_send_window(self) -> int:
        """The stream's send window, once it is open; raises ``ConnectionResetError`` on reset."""
        session = self._driver.session
        while True:
            self._check()
            window = session.send_window(self.stream_id)
            if window > 0:
                return window
            self.writable.clear()
            await self.writable.wait()

    async def send_all(self, data: bytes) -> None:
        """Queue ``data`` on the stream, waiting for window and output room as needed.

        Raises ``ConnectionResetError`` when the stream or the session is gone.
        """
        driver = self._driver
        view = memoryview(data)
        while view:
            self._check()
            sent = driver.session.send(self.stream_id, view)
            if sent:
                view = view[sent:]
                driver.kick()
                continue
            self.writable.clear()
            if driver.session.send_window(self.stream_id) > 0:
                # The window is open, so the output queue is full: the flusher wakes us.
                driver._output_waiters.add(self)
            await self.writable.wait()

    def close(self) -> None:
        """Half-close: send FIN if the stream can still send (else nothing)."""
        session = self._driver.session
        if session.stream_state(self.stream_id) in _CAN_SEND:
            session.close_stream(self.stream_id)
            self._driver.kick()

    def forget(self) -> None:
        """This side is done with the stream: RST it unless it already closed both ways."""
        driver = self._driver
        driver.session.reset_stream(self.stream_id)
        driver.kick()
        if driver.streams.get(self.stream_id) is self:
            del driver.streams[self.stream_id]
        driver._output_waiters.discard(self)

    def _kill(self) -> None:
        self.reset = True
        self.readable.set()
        self.writable.set()


#: Serves one stream the peer opened; the driver resets the stream when it returns.
StreamHandler = Callable[[Stream], Coroutine[Any, Any, None]]


class YamuxDriver:
    """Drives one :class:`Session` over one :class:`MessageTransport` (see the module docstring).

    Parameters:
        transport: the message pipe; the driver never closes it except in :meth:`aclose`.
        client: the yamux role (client: odd stream ids).
        on_stream: runs, as a task of the driver, for each stream the peer opens; without it
            such streams are reset at once.
        logger: where session-level events (GO_AWAY, protocol errors, a stalled peer) go.
        label: names the session in log lines.
        max_streams, max_output: as for :class:`Session` (``max_output_buffer``).
        max_message: largest message handed to the transport.
        output_limit: queued output beyond which the reader pauses (default ``2 * max_output``).
        send_timeout: seconds one message may take to be sent; None waits forever.
    """

    def __init__(
        self,
        transport: MessageTransport,
        *,
        client: bool,
        on_stream: StreamHandler | None = None,
        logger: logging.Logger | None = None,
        label: str = "tunnel",
        max_streams: int = 256,
        max_output: int = MAX_OUTPUT,
        max_message: int = MAX_MESSAGE,
        output_limit: int | None = None,
        send_timeout: float | None = None,
    ) -> None:
        self.transport = transport
        self.session = Session(client=client, max_streams=max_streams, max_output_buffer=max_output)
        self.streams: dict[int, Stream] = {}
        self._on_stream = on_stream
        self._log = logger or logging.getLogger(__name__)
        self._label = label
        self._max_message = max_message
        self._output_limit = 2 * max_output if output_limit is None else output_limit
        self._send_timeout = send_timeout
        self._dead = False
        self._stopping = False  # the flusher returns once the queue is empty
        self._output = asyncio.Event()  # output is queued
        self._flushed = asyncio.Event()  # the flusher took output
        self._output_waiters: set[Stream] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._reader: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._done = asyncio.Event()

    @property
    def dead(self) -> bool:
        """True once the session can carry no more streams (it is ending or over)."""
        return self._dead

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Drive the session until it ends; returns normally however the peer goes away."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._flusher = tg.create_task(self._flush_loop(), name=f"{self._label}-flusher")
                self._reader = tg.create_task(self._read_loop(), name=f"{self._label}-reader")
        except* TransportClosed:
            pass
        finally:
            self._die()
            self._done.set()

    async def aclose(self, timeout: float) -> None:
        """End the session from this side: GO_AWAY, flush for up to ``timeout`` seconds, close
        the transport, and wait for :meth:`run` to return."""
        if not self._dead:
            self.session.go_away()
            self.kick()
        self._die()
        if self._reader is not None:
            self._reader.cancel()
        self._stop_flusher()
        # The flusher sends what is queued (the GO_AWAY) and returns; the peer may be
        # unreachable, so only briefly.
        if self._flusher is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._done.wait()
            self._flusher.cancel()
            await self._done.wait()
        await self.transport.close()

    def open_stream(self) -> Stream:
        """A new stream; raises :class:`YamuxError` when the session takes no more."""
        if self._dead:
            raise YamuxError("the tunnel session has ended")
        stream = Stream(self, self.session.open_stream())
        self.streams[stream.stream_id] = stream
        self.kick()
        return stream

    def kick(self) -> None:
        """Wake the flusher if the session has output (call after any session operation)."""
        if self.session.pending_output_bytes:
            self._output.set()

    # ------------------------------------------------------------------ internals

    def _die(self) -> None:
        if self._dead:
            return
        self._dead = True
        for stream in list(self.streams.values()):
            stream._kill()
            if stream.task is not None:
                stream.task.cancel()
        self._output_waiters.clear()

    def _stop_flusher(self) -> None:
        self._stopping = True
        self._output.set()

    async def _read_loop(self) -> None:
        try:
            while not self._dead:
                try:
                    data = await self.transport.recv()
                except TransportClosed:
                    return
                self.session.receive_data(data)
                for event in self.session.events():
                    self._on_event(event)
                self.kick()
                # Input that only produces control replies must not outrun a peer that does
                # not read them: stop reading until the flusher has caught up.
                while self.session.pending_output_bytes > self._output_limit:
                    self._flushed.clear()
                    await self._flushed.wait()
        finally:
            self._die()
            self._stop_flusher()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.inbox.append(event.data)
                stream.inbox_bytes += len(event.data)
                stream.readable.set()
        elif isinstance(event, WindowUpdated):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.writable.set()
        elif isinstance(event, StreamOpened):
            self._accept(event.stream_id)
        elif isinstance(event, StreamEOF):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.eof = True
                stream.readable.set()
        elif isinstance(event, StreamReset):
            # Forgotten here too: a handler cancelled before it ever ran has no finally to run.
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                self._output_waiters.discard(stream)
                stream._kill()
                if stream.task is not None:
                    stream.task.cancel()
        elif isinstance(event, GoAway):
            # The peer ends the session (§6.3 step 7, §6.4 step 10): every stream is reset. A
            # client saying goodbye is routine for a server; the other way round it is news.
            level = logging.INFO if self.session.client else logging.DEBUG
            self._log.log(
                level, "%s: the peer ended the session (GO_AWAY %d)", self._label, event.code
            )
            self._die()
        elif isinstance(event, ProtocolError):
            # A hostile client must not be able to flood a server's log at warning level.
            level = logging.WARNING if self.session.client else logging.INFO
            self._log.log(level, "%s: protocol error: %s", self._label, event.message)
            self._die()
        # PingReceived: the session queued the answer. StreamAccepted/PongReceived: nothing to do.

    def _accept(self, stream_id: int) -> None:
        if self._on_stream is None or self._tg is None or self._dead:
            self.session.reset_stream(stream_id)
            return
        stream = Stream(self, stream_id)
        self.streams[stream_id] = stream
        stream.task = self._tg.create_task(
            self._serve(stream, self._on_stream), name=f"{self._label}-stream-{stream_id}"
        )

    async def _serve(self, stream: Stream, handler: StreamHandler) -> None:
        """One peer-opened stream, start to end; never raises except when cancelled."""
        try:
            await handler(stream)
        except (YamuxError, ConnectionResetError):
            pass  # the stream or the session ended under the handler (RST, protocol error)
        except Exception:
            self._log.exception("%s: stream %d failed", self._label, stream.stream_id)
        finally:
            # RST whatever is still open (a no-op after a clean FIN both ways or a peer RST).
            stream.forget()

    async def _flush_loop(self) -> None:
        while True:
            if not self.session.pending_output_bytes:
                if self._stopping:
                    return
                self._output.clear()
                await self._output.wait()
                continue
            data = self.session.data_to_send(self._max_message)
            self._flushed.set()
            for stream in self._output_waiters:
                stream.writable.set()
            self._output_waiters.clear()
            if self._send_timeout is None:
                await self.transport.send(data)
                continue
            try:
                async with asyncio.timeout(self._send_timeout):
                    await self.transport.send(data)
            except TimeoutError as exc:
                self._log.info("%s: the peer stopped reading; dropping it", self._label)
                raise TransportClosed from exc


async def splice(
    stream: Stream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    read_chunk: int = READ_CHUNK,
) -> BaseExceptionGroup[OSError | YamuxError] | None:
    """Copy bytes both ways between ``stream`` and a socket until both directions end.

    EOF on either side is passed on as a half-close (FIN to the peer, ``write_eof`` to the
    socket), so an answer can still come back. The socket is read only while the stream's send
    window is open, at most ``read_chunk`` at a time, and received bytes are reported consumed
    only once the socket took them: a slow reader on either end stalls only this stream.
    Returns None when both directions ended cleanly (the socket is then closed politely), else
    the failures (the socket is then aborted, so its peer sees a reset too).
    """
    failure: BaseExceptionGroup[OSError | YamuxError] | None = None
    clean = False
    try:
        # Either direction failing (socket reset, stream RST) ends both.
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_to_socket(stream, writer))
            tg.create_task(_to_stream(stream, reader, read_chunk))
        clean = True
    except* (OSError, YamuxError) as group:
        failure = group
    finally:
        if clean:
            writer.close()
        else:
            writer.transport.abort()
    return failure


async def _to_socket(stream: Stream, writer: asyncio.StreamWriter) -> None:
    """Stream → socket: write, drain, then report consumed (which re-opens the window)."""
    while True:
        await stream.wait_readable()
        if stream.inbox_bytes:
            data = stream.take()
            writer.write(data)
            await writer.drain()
            stream.consumed(len(data))
        else:  # EOF: pass the half-close on
            if writer.can_write_eof():
                writer.write_eof()
            return


async def _to_stream(stream: Stream, reader: asyncio.StreamReader, read_chunk: int) -> None:
    """Socket → stream, never reading more than the peer's window admits."""
    while True:
        window = await stream.wait_send_window()
        data = await reader.read(min(window, read_chunk))
        if not data:
            stream.close()  # FIN: the socket is done
            return
        await stream.send_all(data)
