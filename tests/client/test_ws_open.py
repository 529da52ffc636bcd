"""The SDK's one WebSocket opener (both twins) against a real WebSocket server that refuses."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from hutch import SandboxConnectionError
from hutch.client import _async_ws_open, _sync_ws_open
from hutch.client._ws_open import Settings, upgrade_detail, websocket_url

pytestmark = pytest.mark.timeout(30)

SETTINGS = Settings(
    missing="install websockets",
    refused="Thing WebSocket upgrade rejected by server",
    unreachable="Failed to reach the thing",
    open_timeout=5.0,
    close_timeout=1.0,
    ping_interval=30.0,
    ping_timeout=30.0,
    max_size=1 << 20,
    max_queue=2,
    compress=False,
    receive_buffer=1 << 16,
)


def _refusing(status: int, body: bytes) -> Iterator[str]:
    def refuse(conn: ServerConnection, request: Request) -> Response:
        headers = Headers([("Content-Type", "application/json")])
        return Response(status, "Refused", headers, body)

    def handler(conn: ServerConnection) -> None:
        conn.close()

    server: Server = serve(handler, "127.0.0.1", 0, process_request=refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/x"
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture
def forbidden() -> Iterator[str]:
    envelope = {"detail": {"error": "Forbidden", "message": "Use a key of this workspace"}}
    yield from _refusing(403, json.dumps(envelope).encode())


@pytest.fixture
def missing_endpoint() -> Iterator[str]:
    yield from _refusing(404, b"not json")


def _open_both(url: str, not_found: str | None = None) -> list[str]:
    """The messages of the errors the async and the sync opener raise for ``url``."""
    messages = []
    with pytest.raises(SandboxConnectionError) as caught:
        asyncio.run(_async_ws_open.open_websocket(url, {}, SETTINGS, not_found=not_found))
    messages.append(str(caught.value))
    with pytest.raises(SandboxConnectionError) as caught:
        _sync_ws_open.open_websocket(url, {}, SETTINGS, not_found=not_found)
    messages.append(str(caught.value))
    return messages


def test_url_swaps_the_scheme_and_appends_the_path() -> None:
    """http(s) data plane URLs become ws(s), in any case; others only get the path."""
    assert websocket_url("http://h:1/dp/x", "/tunnel") == "ws://h:1/dp/x/tunnel"
    assert websocket_url("HTTPS://h/dp/x", "/execute/ws") == "wss://h/dp/x/execute/ws"
    assert websocket_url("ws://h/dp/x", "/tunnel") == "ws://h/dp/x/tunnel"


def test_upgrade_detail_reads_the_envelope_or_falls_back() -> None:
    """The envelope's message is shown; a body that is not JSON shows the fallback."""
    body = json.dumps({"detail": {"error": "NotFound", "message": "No such sandbox"}}).encode()
    assert upgrade_detail(404, body, "fallback") == "No such sandbox"
    assert upgrade_detail(502, b"<html>", "fallback") == "fallback"


def test_refused_upgrade_carries_status_and_server_words(forbidden: str) -> None:
    """A refusal: SandboxConnectionError with the caller's words, the status, the envelope's."""
    expected = "Thing WebSocket upgrade rejected by server (HTTP 403): Use a key of this workspace"
    assert _open_both(forbidden) == [expected, expected]


def test_404_has_its_own_message_only_when_given(missing_endpoint: str) -> None:
    """A 404 says what the caller gave for a missing endpoint, else it is an ordinary refusal."""
    assert _open_both(missing_endpoint, not_found="update the server") == ["update the server"] * 2
    for message in _open_both(missing_endpoint):
        assert message.startswith("Thing WebSocket upgrade rejected by server (HTTP 404): ")


def _closed_port() -> int:
    """A port that was free a moment ago: bound, then released, so nothing listens on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_says_so() -> None:
    """Nothing listening: SandboxConnectionError with the caller's words, never an OSError."""
    for message in _open_both(f"ws://127.0.0.1:{_closed_port()}/x"):
        assert message.startswith("Failed to reach the thing: ")
