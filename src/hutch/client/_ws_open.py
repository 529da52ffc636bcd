"""The I/O-free parts of opening the SDK's WebSockets (spec §4.1, §6.1), shared by both twins of
``_async_ws_open``: URLs, settings, the reconnect backoff, and refusals as SDK errors.
"""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import dataclass
from typing import Any

from hutch.client._errors import SandboxConnectionError
from hutch.protocol._errors import parse_error

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


def connect_options(settings: Settings) -> dict[str, Any]:
    """websockets' ``connect()`` keywords for ``settings``.

    Only what a caller sets is passed: the rest stays websockets' own default.
    """
    options: dict[str, Any] = {
        "open_timeout": settings.open_timeout,
        "ping_interval": settings.ping_interval,
        "ping_timeout": settings.ping_timeout,
        "close_timeout": settings.close_timeout,
        "max_size": settings.max_size,
    }
    if settings.max_queue is not None:
        options["max_queue"] = settings.max_queue
    if not settings.compress:
        options["compression"] = None
    return options


def refusal(
    settings: Settings,
    status: int,
    body: bytes | bytearray | None,
    fallback: str,
    not_found: str | None,
) -> SandboxConnectionError:
    """The error for an upgrade refused with ``status`` (see ``open_websocket``'s ``not_found``)."""
    if status == 404 and not_found is not None:
        return SandboxConnectionError(not_found)
    detail = upgrade_detail(status, body, fallback)
    return SandboxConnectionError(f"{settings.refused} (HTTP {status}): {detail}")


def fix_receive_buffer(conn: object, settings: Settings) -> None:
    """Fix the socket's SO_RCVBUF to ``settings.receive_buffer``, if set (best effort)."""
    if settings.receive_buffer is None:
        return
    sock = getattr(conn, "socket", None)
    if sock is None:
        transport = getattr(conn, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, settings.receive_buffer)
