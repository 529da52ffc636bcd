"""TCP tunnels into a sandbox (spec §6): :class:`AsyncTunnel`.

Written by hand. The sync :class:`~hutch.client._sync_tunnel.Tunnel` is *not* generated from
this file: a tunnel serves many connections at once, which here are tasks on one event loop and
would be threads in a blocking twin, so the sync class runs this one on a private loop instead.

A tunnel listens on ``127.0.0.1:<local_port>``. Each accepted connection becomes a stream of one
yamux session (this side is the client) carried by one WebSocket to the sandbox's ``/tunnel``:
the stream starts with the 3-byte connect header, waits for the server's status byte and then
copies bytes both ways under yamux flow control. The protocol logic is
:class:`hutch.protocol._yamux.Session`, driven by the
:class:`~hutch.protocol._yamux_driver.YamuxDriver` the server uses too; this module adapts the
``websockets`` connection to it and opens one stream per local connection.

Behaviour, and where it differs from langsmith's SDK:

* ``local_port=0`` binds a free port chosen by the OS (read it from :attr:`AsyncTunnel.local_port`).
  langsmith's 0 means "the same number as ``remote_port``" (spec §6.1); pass that number
  explicitly for the same effect.
* The WebSocket is opened eagerly, before the port is bound, so a refused upgrade raises from
  ``tunnel()`` (:class:`SandboxConnectionError`, never a websockets exception).
* A stream the server refuses (status 1, 2 or 3), or any failure of one connection, is logged on
  the ``hutch.client`` logger and that local connection is closed; the tunnel goes on (§6.3).
* Half-close aware: EOF from the local application sends FIN, and the answer still arrives.
* If the session has died (network loss, server restart), the next local connection opens a new
  WebSocket, trying ``max_reconnects`` times with backoff (0.5 s, 1 s, 2 s, …).
* The WebSocket is pinged every 30 s so that a dead session is noticed; payloads are not
  compressed (permessage-deflate is not offered: tunnel bytes rarely compress and it costs CPU).

Bounds, in bytes: per stream, data received and not yet written to the local socket stays within
the 256 KiB yamux window; a local socket is read only while the send window is open; queued
output stays within :data:`~hutch.protocol._yamux_driver.MAX_OUTPUT` plus one message in flight.

``websockets`` is an optional dependency (``pip install 'hutch[ws]'``), imported when a tunnel
opens.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Coroutine, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from hutch.client._async_ws_open import open_websocket
from hutch.client._errors import (
    SandboxClientError,
    TunnelConnectionRefusedError,
    TunnelError,
    TunnelPortNotAllowedError,
    TunnelUnsupportedVersionError,
)
from hutch.client._ws_open import Settings, backoff, websocket_url
from hutch.protocol._yamux import StreamStatus, YamuxError, encode_stream_header
from hutch.protocol._yamux_driver import READ_CHUNK, Stream, TransportClosed, YamuxDriver, splice

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

logger = logging.getLogger("hutch.client")

#: The text of the ImportError raised when a tunnel is opened without ``websockets``.
WEBSOCKETS_REQUIRED: Final = (
    "TCP tunnel requires the 'websockets' package (>= 15); install it with pip install 'hutch[ws]'"
)

# Connection settings (spec §6.1), with WebSocket pings added so that a dead session is noticed.
_OPEN_TIMEOUT: Final = 15.0
_CLOSE_TIMEOUT: Final = 5.0
_PING_INTERVAL: Final = 30.0
_PING_TIMEOUT: Final = 60.0
#: Largest incoming message accepted: hutch sends at most 1 MiB (§6.2); be generous to others.
_MAX_INCOMING: Final = 16 * 1024 * 1024
#: Streams open at once on one session; local connections beyond it are closed.
MAX_STREAMS: Final = 1024
_LISTEN_BACKLOG: Final = 128
_SETTINGS: Final = Settings(
    missing=WEBSOCKETS_REQUIRED,
    refused="Tunnel WebSocket upgrade rejected by server",
    unreachable="Failed to open a tunnel to the sandbox",
    open_timeout=_OPEN_TIMEOUT,
    close_timeout=_CLOSE_TIMEOUT,
    ping_interval=_PING_INTERVAL,
    ping_timeout=_PING_TIMEOUT,
    max_size=_MAX_INCOMING,
    compress=False,
)


def tunnel_url(dataplane_url: str) -> str:
    """The tunnel WebSocket URL of a data plane (spec §6.1)."""
    return websocket_url(dataplane_url.rstrip("/"), "/tunnel")


def check_arguments(remote_port: int, local_port: int, max_reconnects: int) -> None:
    """Raise ``ValueError`` for a port or reconnect count out of range."""
    if not 1 <= remote_port <= 65535:
        raise ValueError(f"remote_port must be between 1 and 65535 (got {remote_port})")
    if not 0 <= local_port <= 65535:
        raise ValueError(
            f"local_port must be between 1 and 65535, or 0 for a free port (got {local_port})"
        )
    if max_reconnects < 0:
        raise ValueError(f"max_reconnects must be >= 0 (got {max_reconnects})")


class _WebSocketTransport:
    """A ``websockets`` client connection as the driver's message transport."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, data: bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self.ws.send(data)
        except ConnectionClosed as exc:
            raise TransportClosed from exc

    async def recv(self) -> bytes:
        from websockets.exceptions import ConnectionClosed

        try:
            message = await self.ws.recv()
        except ConnectionClosed as exc:
            raise TransportClosed from exc
        return message.encode() if isinstance(message, str) else message

    async def close(self) -> None:
        self.ws.close_timeout = _CLOSE_TIMEOUT
        await self.ws.close()


class _Connection:
    """One WebSocket and the yamux client session on it, driven by a task of its own."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.driver = YamuxDriver(
            _WebSocketTransport(ws),
            client=True,
            logger=logger,
            label="tunnel",
            max_streams=MAX_STREAMS,
        )
        self._task = asyncio.create_task(self.driver.run(), name="hutch-tunnel-session")

    @property
    def dead(self) -> bool:
        """True once the session can carry no new streams."""
        return self.driver.dead

    async def aclose(self) -> None:
        """GO_AWAY (§6.3 step 7), flush what is queued, close the WebSocket; stop the driver."""
        try:
            await self.driver.aclose(_CLOSE_TIMEOUT)
        finally:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class AsyncTunnel:
    """A local TCP port forwarded to a port inside a sandbox (spec §6).

    Get one with ``await sandbox.tunnel(remote_port)``; use it as an async context manager::

        async with await sb.tunnel(5432) as t:
            conn = await asyncpg.connect(host="127.0.0.1", port=t.local_port)

    Connections to ``127.0.0.1:local_port`` reach ``127.0.0.1:remote_port`` as seen from inside
    the sandbox. Several tunnels may be open at once.
    """

    def __init__(
        self,
        dataplane_url: str,
        headers: Mapping[str, str],
        remote_port: int,
        *,
        local_port: int = 0,
        max_reconnects: int = 3,
    ) -> None:
        check_arguments(remote_port, local_port, max_reconnects)
        self._url = tunnel_url(dataplane_url)
        self._headers = dict(headers)
        self._remote_port = remote_port
        self._local_port = local_port
        self._max_reconnects = max_reconnects
        self._conn: _Connection | None = None
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(
        cls,
        dataplane_url: str,
        headers: Mapping[str, str],
        remote_port: int,
        *,
        local_port: int = 0,
        max_reconnects: int = 3,
    ) -> AsyncTunnel:
        """Connect the WebSocket, then listen on the local port (spec §6.1).

        Raises:
            ValueError: A port or ``max_reconnects`` is out of range.
            ImportError: ``websockets`` is not installed.
            SandboxConnectionError: The server refused the upgrade or could not be reached.
            OSError: The local port is in use.
        """
        tunnel = cls(
            dataplane_url,
            headers,
            remote_port,
            local_port=local_port,
            max_reconnects=max_reconnects,
        )
        try:
            tunnel._conn = await tunnel._connect()
            tunnel._listen()
        except BaseException:
            await tunnel.aclose()
            raise
        return tunnel

    @property
    def local_port(self) -> int:
        """The port this tunnel listens on, on 127.0.0.1."""
        return self._local_port

    @property
    def remote_port(self) -> int:
        """The port inside the sandbox that connections reach."""
        return self._remote_port

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._closed

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening, close every forwarded connection and the WebSocket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        if self._conn is not None:
            await self._conn.aclose()

    # ------------------------------------------------------------------ internals

    async def _connect(self) -> _Connection:
        return _Connection(await open_websocket(self._url, self._headers, _SETTINGS))

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Rebinding over TIME_WAIT is fine; Linux still refuses a port someone listens on.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", self._local_port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise OSError(
                    exc.errno,
                    f"Port {self._local_port} is already in use by another service. Choose a "
                    "different local_port, or 0 for a free one.",
                ) from exc
            listener.listen(_LISTEN_BACKLOG)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._local_port = listener.getsockname()[1]
        self._spawn(self._accept_loop(listener))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _addr = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: the backlog waits; try again shortly.
                    logger.warning("tunnel: accept failed (%s); retrying", exc)
                    await asyncio.sleep(0.1)
                    continue
                logger.error("tunnel: local port %d stopped accepting: %s", self._local_port, exc)
                return
            self._spawn(self._serve(sock))

    async def _live_connection(self) -> _Connection:
        """The current session, or a new one if it died (§6.3 step 8)."""
        async with self._lock:
            if self._conn is not None and not self._conn.dead:
                return self._conn
            if self._conn is not None:
                old, self._conn = self._conn, None
                await old.aclose()
            last: SandboxClientError | None = None
            for attempt in range(1, self._max_reconnects + 1):
                try:
                    self._conn = await self._connect()
                except SandboxClientError as exc:
                    last = exc
                    logger.debug("tunnel: reconnect attempt %d failed: %s", attempt, exc)
                    if attempt < self._max_reconnects:
                        await asyncio.sleep(backoff(attempt))
                    continue
                logger.debug("tunnel: reconnected (attempt %d)", attempt)
                return self._conn
            raise TunnelError(
                f"The tunnel session to port {self._remote_port} ended and reconnecting failed "
                f"after {self._max_reconnects} attempts"
                + (f": {last}" if last else "; reconnects are disabled (max_reconnects=0)")
            ) from last

    async def _serve(self, sock: socket.socket) -> None:
        """One local connection, start to end; failures are logged, never raised (§6.3)."""
        stream: Stream | None = None
        try:
            conn = await self._live_connection()
            stream = conn.driver.open_stream()
            reader, writer = await asyncio.open_connection(sock=sock, limit=READ_CHUNK)
        except (SandboxClientError, YamuxError, OSError) as exc:
            logger.warning("tunnel: dropping a connection to port %d: %s", self._remote_port, exc)
            sock.close()
            if stream is not None:
                stream.forget()
            return
        except BaseException:
            sock.close()
            raise
        try:
            answer = await self._connect_stream(stream)
            if answer:
                failure = await splice(stream, reader, writer)
                if failure is not None:
                    logger.debug(
                        "tunnel: connection to port %d ended: %r", self._remote_port, failure
                    )
            elif answer is False:
                writer.close()  # refused: close the local connection politely
            else:
                writer.transport.abort()
        except BaseException:
            writer.transport.abort()
            raise
        finally:
            stream.forget()

    async def _connect_stream(self, stream: Stream) -> bool | None:
        """Send the connect header and read the status byte: True when the server said OK,
        False when it refused (logged), None when the stream was reset first (logged)."""
        try:
            await stream.send_all(encode_stream_header(self._remote_port))
            await stream.wait_readable()
        except ConnectionResetError:
            # RST before the status byte: the server refused the stream itself (a server
            # caps the streams of one tunnel), or the session ended.
            logger.warning(
                "tunnel: the server refused a connection to port %d before answering "
                "(too many connections on one tunnel, or the session ended)",
                self._remote_port,
            )
            return None
        status = stream.take(1)
        if status:
            stream.consumed(1)
        if status == bytes((StreamStatus.OK,)):
            return True
        self._log_refusal(status)
        stream.close()
        return False

    def _log_refusal(self, status: bytes) -> None:
        """Log why the server refused a stream, as the TunnelError it stands for (§6.3 step 3)."""
        port = self._remote_port
        error: TunnelError
        if status == bytes((StreamStatus.NOT_ALLOWED,)):
            error = TunnelPortNotAllowedError(
                f"the sandbox does not allow tunnelling to port {port}", port=port
            )
        elif status == bytes((StreamStatus.DIAL_FAILED,)):
            error = TunnelConnectionRefusedError(
                f"nothing listens on 127.0.0.1:{port} inside the sandbox; start the service "
                "there (bound to 127.0.0.1 or 0.0.0.0) first",
                port=port,
            )
        elif status == bytes((StreamStatus.BAD_VERSION,)):
            error = TunnelUnsupportedVersionError(
                "the server does not speak tunnel protocol version 1; update the server or the SDK"
            )
        elif status:
            error = TunnelError(f"the server answered with unknown status {status[0]}")
        else:
            error = TunnelError("the server closed the stream without a status")
        logger.warning("tunnel: connection to port %d refused: %s", port, error)
