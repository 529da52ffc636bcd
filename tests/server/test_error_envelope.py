"""Errors that neither lie nor leak: every error answer is the envelope with the right type and
status, oversized commands and sizes are a client's error, and a 500 costs no connection.

Each test reproduces a finding of an adversarial run (a 500 for a 10 MB command, ``InternalError``
for a body that is not UTF-8, uvicorn's plain text for a malformed URL, ``storage: 999999Ti``
accepted, a dropped keep-alive connection after a 500, an OpenAPI document without errors).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from hutch.protocol._exec import MAX_ARG_BYTES, MAX_EXEC_BYTES
from hutch.server import _errors
from hutch.server._openapi import EnvelopedAPI
from tests.conftest import TIME_SCALE, Server, wait_until

pytestmark = pytest.mark.root

MiB = 1024 * 1024


def _envelope(r: httpx.Response, status: int, error: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"detail"} and set(body["detail"]) == {"error", "message", "request_id"}, (
        body
    )
    assert body["detail"]["request_id"] == r.headers["x-request-id"], body
    assert body["detail"]["error"] == error, body
    assert "Traceback" not in r.text
    message: str = body["detail"]["message"]
    return message


@pytest.fixture
def sandbox_id(sandbox: Any) -> str:
    sid: str = sandbox.id
    return sid


# -- command sizes -------------------------------------------------------------------------------


def test_oversized_command_is_413_on_http_execute(server: Server, sandbox_id: str) -> None:
    """A command over the kernel's argument limit on /execute is 413 PayloadTooLarge naming the
    limit, not a 500; a 10 MB one is refused as a body over the server's limit."""
    with server.http() as http:
        r = http.post(f"/dp/{sandbox_id}/execute", json={"command": "true #" + "x" * 200_000})
        message = _envelope(r, 413, "PayloadTooLarge")
        assert str(MAX_ARG_BYTES) in message and "file" in message
        r = http.post(f"/dp/{sandbox_id}/execute", json={"command": "true #" + "x" * 10 * MiB})
        assert "--max-body-bytes" in _envelope(r, 413, "PayloadTooLarge")
        # The server is unharmed and the sandbox still runs commands.
        ok = http.post(f"/dp/{sandbox_id}/execute", json={"command": "echo fine"})
        assert ok.json()["stdout"] == "fine\n"


def test_oversized_environment_is_413(server: Server, sandbox_id: str) -> None:
    """An environment over the execve budget, or one variable over the kernel's limit, is 413."""
    many = {f"V{i}": "y" * 1000 for i in range(MAX_EXEC_BYTES // 1000)}
    one = {"BIG": "y" * MAX_ARG_BYTES}
    with server.http() as http:
        for env in (many, one):  # many: over the body limit too, which answers first
            r = http.post(f"/dp/{sandbox_id}/execute", json={"command": "true", "env": env})
            message = _envelope(r, 413, "PayloadTooLarge")
            assert "environment" in message or "--max-body-bytes" in message


def test_command_at_the_limit_runs(server: Server, sandbox_id: str) -> None:
    """The limit is the kernel's: a command of exactly MAX_ARG_BYTES bytes runs."""
    command = "true #" + "x" * (MAX_ARG_BYTES - len("true #"))
    with server.http() as http:
        r = http.post(f"/dp/{sandbox_id}/execute", json={"command": command})
    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text


def test_oversized_command_is_refused_on_sse_and_websocket(server: Server, sandbox_id: str) -> None:
    """The SSE start answers 413 and the WebSocket an ``error`` PayloadTooLarge: one check."""
    big = "true #" + "x" * (MAX_ARG_BYTES + 1)
    with server.http() as http:
        r = http.post(f"/dp/{sandbox_id}/execute/stream/start", json={"command": big})
        _envelope(r, 413, "PayloadTooLarge")
    url = f"ws://{server.url.removeprefix('http://')}/dp/{sandbox_id}/execute/ws"
    with connect(url, additional_headers={"X-Api-Key": server.key}, max_size=None) as ws:
        ws.send(json.dumps({"type": "execute", "command": big}))
        first = json.loads(ws.recv(timeout=10 * TIME_SCALE))
    assert first["type"] == "error" and first["error_type"] == "PayloadTooLarge", first


# -- bodies --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        pytest.param(b'{"command": "\xff"}', "application/json", "not valid JSON", id="not-utf8"),
        pytest.param(b'{"command": ', "application/json", "at byte 12", id="truncated"),
        pytest.param(b'{"command": "x"}', "text/plain", "must be a JSON object", id="not-json"),
        pytest.param(b'["x"]', "application/json", "must be a JSON object", id="array"),
    ],
)
def test_unreadable_body_is_a_validation_error(
    server: Server, sandbox_id: str, body: bytes, content_type: str, says: str
) -> None:
    """A body that is not a JSON object is 422 ValidationError saying why, never InternalError."""
    with server.http() as http:
        r = http.post(
            f"/dp/{sandbox_id}/execute", content=body, headers={"content-type": content_type}
        )
    assert says in _envelope(r, 422, "ValidationError")


# -- Starlette's and uvicorn's own answers -------------------------------------------------------


def test_unknown_path_and_method_are_enveloped(server: Server) -> None:
    """Starlette's 404 and 405 come in the envelope; the 405 keeps its Allow header."""
    with server.http() as http:
        assert "No such endpoint" in _envelope(http.get("/nope"), 404, "NotFound")
        r = http.put("/dp/x/execute")
        assert "use POST" in _envelope(r, 405, "MethodNotAllowed")
        assert r.headers["allow"] == "POST"


def _raw(server: Server, request: bytes) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10 * TIME_SCALE) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize(
    ("target", "says"),
    [
        pytest.param("/v2/sandboxes/templates/%ff%fe", "not UTF-8", id="not-utf8"),
        pytest.param("/v2/sandboxes/templates/%zz", "two hex digits", id="bad-percent"),
        pytest.param("/v2/sandboxes/templates/a%", "two hex digits", id="trailing-percent"),
        pytest.param("/v2/sandboxes/templates/a%00b", "NUL", id="nul"),
        pytest.param("/v2/sandboxes/templates?x=%c3", "query string is not UTF-8", id="query"),
    ],
)
def test_malformed_url_is_400_and_keeps_the_connection(
    server: Server, target: str, says: str
) -> None:
    """A malformed percent-encoded URL is 400 BadRequest before routing; the connection stays."""
    host = server.url.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=10 * TIME_SCALE)
    try:
        conn.request("GET", target, headers={"X-Api-Key": server.key})
        r = conn.getresponse()
        body = json.loads(r.read())
        assert r.status == 400 and body["detail"]["error"] == "BadRequest", body
        assert says in body["detail"]["message"]
        sock = conn.sock
        assert sock is not None
        conn.request("GET", "/v2/sandboxes/templates", headers={"X-Api-Key": server.key})
        again = conn.getresponse()
        again.read()
        assert again.status == 200 and conn.sock is sock
    finally:
        conn.close()


def test_malformed_url_refuses_a_websocket_upgrade(server: Server) -> None:
    """A WebSocket upgrade to a malformed URL is refused with the 400 envelope."""
    url = f"ws://{server.url.removeprefix('http://')}/dp/%ff/execute/ws"
    with pytest.raises(InvalidStatus) as info:
        connect(url, additional_headers={"X-Api-Key": server.key}).close()
    response = info.value.response
    assert response.status_code == 400
    assert json.loads(response.body or b"")["detail"]["error"] == "BadRequest"


def test_raw_bytes_in_the_request_line_stay_uvicorns(server: Server) -> None:
    """What h11 cannot parse (a raw 0xff in the path) never reaches hutch: uvicorn answers 400
    in plain text and closes, as documented in hutch.server._errors; the server keeps serving."""
    out = _raw(server, b"GET /v2/sandboxes/templates/\xff HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    assert b"text/plain" in out.split(b"\r\n\r\n")[0].lower()
    assert server.alive()


def test_non_ascii_download_token_is_401(server: Server, sandbox_id: str) -> None:
    """A download link whose token is not ASCII is 401 "malformed token", not a 500 (found by
    the schemathesis run)."""
    with server.http() as http:
        r = http.get(f"/dp/{sandbox_id}/download-link", params={"path": "x", "token": "é.é"})
    assert "malformed token" in _envelope(r, 401, "Unauthorized")


# -- sizes of resources --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        pytest.param(
            "/templates",
            {"name": "huge", "image": "local/busybox", "resources": {"storage": "999999Ti"}},
            "1Pi",
            id="template-storage",
        ),
        pytest.param(
            "/templates",
            {"name": "huge", "image": "local/busybox", "resources": {"cpu": "9" * 400}},
            "exceeds this host",
            id="template-cpu-400-digits",
        ),
        pytest.param(
            "/templates",
            {"name": "huge", "image": "local/busybox", "resources": {"memory": "9" * 400 + "Gi"}},
            "exceeds this host",
            id="template-memory-400-digits",
        ),
        pytest.param("/boxes", {"mem_bytes": 10**400}, "exceeds this host", id="mem-bytes"),
        pytest.param(
            "/boxes", {"fs_capacity_bytes": 10**30}, "fs_capacity_bytes", id="fs-capacity"
        ),
        pytest.param("/snapshots?offset=" + "9" * 30, None, "offset", id="offset"),
        pytest.param(
            "/templates",
            {"name": "huge", "image": "local/busybox", "resources": {"storage": "900Ti"}},
            "larger than this server's storage pool",
            id="template-storage-over-pool",
        ),
        pytest.param(
            "/boxes",
            {"fs_capacity_bytes": 1 << 49},
            "larger than this server's storage pool",
            id="fs-capacity-over-pool",
        ),
    ],
)
def test_sizes_have_sane_maxima(
    server: Server, path: str, body: dict[str, Any] | None, says: str
) -> None:
    """Sizes and counts past what could ever be given are 422, not accepted and not a 500."""
    with server.http() as http:
        url = f"/v2/sandboxes{path}"
        r = http.get(url) if body is None else http.post(url, json=body)
    assert says in _envelope(r, 422, "ValidationError")


# -- an uncaught exception -----------------------------------------------------------------------


@pytest.fixture
def crashing_app() -> Iterator[str]:
    """A real uvicorn serving the hutch application class with a route that raises."""
    app = EnvelopedAPI()
    _errors.install(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail /etc/hutch")

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10 * TIME_SCALE)


def test_uncaught_exception_is_a_500_envelope_that_keeps_the_connection(
    crashing_app: str,
) -> None:
    """An uncaught exception is a 500 InternalError envelope without the traceback or the
    exception's text, and the keep-alive connection serves the next request."""
    conn = http.client.HTTPConnection(crashing_app, timeout=10 * TIME_SCALE)
    try:
        conn.request("GET", "/boom")
        r = conn.getresponse()
        text = r.read().decode()
        assert r.status == 500
        body = json.loads(text)
        assert body["detail"]["error"] == "InternalError"
        assert "RuntimeError" in body["detail"]["message"]
        assert "secret" not in text and "Traceback" not in text
        sock = conn.sock
        assert sock is not None
        conn.request("GET", "/ok")
        again = conn.getresponse()
        assert again.status == 200 and json.loads(again.read()) == {"ok": True}
        assert conn.sock is sock
    finally:
        conn.close()


# -- the OpenAPI document ------------------------------------------------------------------------


def test_openapi_states_the_error_answers(server: Server) -> None:
    """Every operation declares 400 and 500 (and 401 when it needs a key) as ErrorEnvelope."""
    doc = httpx.get(f"{server.url}/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert schemas["ErrorEnvelope"]["required"] == ["detail"]
    assert "HTTPValidationError" not in schemas
    assert "PayloadTooLarge" in schemas["ErrorType"]["enum"]
    envelope = {"$ref": "#/components/schemas/ErrorEnvelope"}
    operations = [(p, m, op) for p, ops in doc["paths"].items() for m, op in ops.items()]
    assert len(operations) > 50
    for path, method, op in operations:
        responses = op["responses"]
        expected = {"400", "500"} | ({"401", "403"} if op.get("security") else set())
        assert expected <= set(responses), (method, path, sorted(responses))
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert response["content"]["application/json"]["schema"] == envelope
    execute = doc["paths"]["/dp/{sandbox_id}/execute"]["post"]["responses"]
    assert {"404", "413", "422"} <= set(execute)
