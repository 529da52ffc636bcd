"""Opening the SDK's WebSockets (spec §4.1, §6.1): the upgrade, and refusals as SDK errors.

Written by hand. ``scripts/gen_sync.py`` generates the sync twin (``_sync_ws_open.py``) from this
file: keep every async-only name in that script's replacement table, and run it after editing.

Each caller (the exec stream, the tunnel) names its URL and its ``_ws_open.Settings`` (timeouts,
limits, the words of its errors); this module turns a missing ``websockets`` into a helpful
ImportError and every refused or failed upgrade into :class:`SandboxConnectionError` carrying the
server's own message from the error envelope, never a websockets exception. The I/O-free parts
live in ``_ws_open``, shared by both twins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from hutch.client._errors import SandboxConnectionError
from hutch.client._ws_open import Settings, connect_options, fix_receive_buffer, refusal

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection


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

    try:
        # Entering connect()'s context is the one form both the asyncio and the sync client
        # accept without a warning (websockets 17.1 deprecates a bare sync connect()); the
        # caller closes the connection itself.
        conn: ClientConnection = await connect(
            url, additional_headers=dict(headers), **connect_options(settings)
        ).__aenter__()
    except InvalidStatus as exc:
        response = exc.response
        raise refusal(settings, response.status_code, response.body, str(exc), not_found) from exc
    except (OSError, WebSocketException) as exc:  # TimeoutError is an OSError
        raise SandboxConnectionError(f"{settings.unreachable}: {exc}") from exc
    fix_receive_buffer(conn, settings)
    return conn
