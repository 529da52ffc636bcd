"""Opening the SDK's WebSockets (spec §4.1, §6.1): URL, upgrade, and refusals as SDK errors.

Written by hand. ``scripts/gen_sync.py`` generates the sync twin (``_sync_ws_open.py``) from this
file: keep every async-only name in that script's replacement table, and run it after editing.

Each caller (the exec stream, the tunnel) names its path, its connection settings and the words
of its errors; this module turns a missing ``websockets`` into a helpful ImportError and every
refused or failed upgrade into :class:`SandboxConnectionError` carrying the server's own message
from the error envelope, never a websockets exception.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hutch.client._errors import SandboxConnectionError
from hutch.protocol._errors import parse_error

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

_BACKOFF_BASE = 0.5
_BACKOFF_MAX = 8.0


def backoff(attempt: int) -> float:
    """Seconds before reconnect attempt ``attempt`` (from 1): 0.5 doubling, at most 8 (§4.7)."""
    return min(_BACKOFF_BASE * 2.0 ** (attempt - 1), _BACKOFF_MAX)


def websocket_url(dataplane_url: str, path: str) -> str:
    """``path`` under a data plane URL, its scheme turned from http(s) to ws(s) (spec §3.1)."""
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if dataplane_url[: len(http)].lower() == http:
            return f"{ws}{dataplane_url[len(http) :]}{path}"
    return f"{dataplane_url}{path}"


def upgrade_detail(status: int, body: bytes | bytearray | None, fallback: str) -> str:
    """The server's own words from a refused upgrade, if it sent hutch's error envelope."""
    try:
        data = json.loads(body or b"")
    except ValueError:
        return fallback
    return parse_error(status, data, fallback).message


@dataclass(frozen=True)
class Settings:
    """How one kind of WebSocket is opened and kept, and what its errors say."""

    #: The ImportError's text when ``websockets`` is not installed.
    missing: str
    #: Starts the message of a refused upgrade: ``"<refused> (HTTP 403): <detail>"``.
    refused: str
    #: Starts the message of an unreachable server: ``"<unreachable>: <error>"``.
    unreachable: str
    open_timeout: float
    close_timeout: float
    ping_interval: float
    ping_timeout: float
    max_size: int
    #: Messages websockets may hold before they are read (None: its default).
    max_queue: int | None = None
    #: Offer permessage-deflate (websockets' default) or not.
    compress: bool = True
    #: SO_RCVBUF to fix on the socket (None: let TCP autotune it).
    receive_buffer: int | None = None


def _socket_of(conn: object) -> socket.socket | None:
    sock = getattr(conn, "socket", None)
    if sock is None:
        transport = getattr(conn, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
    return sock


async def open_websocket(
    url: str,
    headers: Mapping[str, str],
    settings: Settings,
    *,
    not_found: str | None = None,
) -> ClientConnection:
    """Open a WebSocket to ``url``; nothing has been sent on it yet.

    ``not_found``, if given, is the whole message for an upgrade refused with 404 (the server
    lacks the endpoint).

    Raises:
        ImportError: ``websockets`` is not installed.
        SandboxConnectionError: The upgrade was refused or the server could not be reached.
    """
    try:
        from websockets.asyncio.client import connect
    except ImportError as exc:
        raise ImportError(settings.missing) from exc
    # Apart from the client, so that the sync twin's imports stay sorted too.
    from websockets.exceptions import InvalidStatus, WebSocketException

    # Only what a caller sets is passed: the rest stays websockets' own default.
    extra: dict[str, Any] = {}
    if settings.max_queue is not None:
        extra["max_queue"] = settings.max_queue
    if not settings.compress:
        extra["compression"] = None
    try:
        # Entering connect()'s context is the one form both the asyncio and the sync client
        # accept without a warning (websockets 17.1 deprecates a bare sync connect()); the
        # caller closes the connection itself.
        conn: ClientConnection = await connect(
            url,
            additional_headers=dict(headers),
            open_timeout=settings.open_timeout,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            close_timeout=settings.close_timeout,
            max_size=settings.max_size,
            **extra,
        ).__aenter__()
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status == 404 and not_found is not None:
            raise SandboxConnectionError(not_found) from exc
        detail = upgrade_detail(status, exc.response.body, str(exc))
        raise SandboxConnectionError(f"{settings.refused} (HTTP {status}): {detail}") from exc
    except (OSError, WebSocketException) as exc:  # TimeoutError is an OSError
        raise SandboxConnectionError(f"{settings.unreachable}: {exc}") from exc
    if settings.receive_buffer is not None:
        sock = _socket_of(conn)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, settings.receive_buffer)
    return conn
