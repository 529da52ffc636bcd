"""Service URLs (spec §2.3) against a real server: issuing, the HTTP and WebSocket proxy into a
sandbox, the browser cookie, every refusal, what the service gets to see, and the real
``langsmith`` SDK's ``client.service()``.

Services: busybox ``httpd`` (a file and a CGI that prints its environment) in one sandbox, and
``service_app.py`` (HTTP and an RFC 6455 echo, stdlib python) in a Debian sandbox.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from hutch import Sandbox, SandboxClient
from hutch.server._errors import ApiError
from hutch.server._service import Route, relay_http
from tests.compat._venvs import langsmith_python
from tests.conftest import HUTCH, TIME_SCALE, Server, free_port, wait_until

root = pytest.mark.root
APP = Path(__file__).with_name("service_app.py")
TOKEN = "X-Langsmith-Sandbox-Service-Token"
HTTPD, PYAPP = 8000, 8001
PROMPT = 10 * TIME_SCALE
MiB = 1024 * 1024
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


# -- helpers -----------------------------------------------------------------------------------


def issue(server: Server, name: str, port: int, **body: Any) -> httpx.Response:
    with server.http() as http:
        return http.post(f"/api/v2/sandboxes/boxes/{name}/service-url", json={"port": port, **body})


def service(server: Server, name: str, port: int, **body: Any) -> dict[str, str]:
    r = issue(server, name, port, **body)
    assert r.status_code == 200, r.text
    out: dict[str, str] = r.json()
    return out


def envelope(r: httpx.Response, status: int, error: str) -> str:
    """The message of an error envelope with this status and type."""
    assert r.status_code == status, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert detail["error"] == error, detail
    message: str = detail["message"]
    return message


def get(url: str, token: str | None = None, **kw: Any) -> httpx.Response:
    headers = dict(kw.pop("headers", {}))
    if token is not None:
        headers[TOKEN] = token
    return httpx.get(url, headers=headers, timeout=PROMPT * 3, **kw)


def ws_url(http_url: str) -> str:
    return "ws" + http_url.removeprefix("http")


def seen_headers(payload: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in payload["headers"]}


@pytest.fixture(scope="module")
def bb_box(client: SandboxClient, bb_template: str) -> Iterator[Sandbox]:
    """busybox httpd on 127.0.0.1:8000 inside: /index.html and /cgi-bin/env."""
    with client.sandbox(bb_template) as sb:
        sb.write("/www/index.html", "hello from busybox\n")
        sb.write("/www/cgi-bin/env", "#!/bin/sh\necho Content-Type: text/plain\necho\nenv\n")
        sb.run(f"chmod +x /www/cgi-bin/env && httpd -p 127.0.0.1:{HTTPD} -h /www")
        yield sb


@pytest.fixture(scope="module")
def py_box(server: Server, client: SandboxClient, py_template: str) -> Iterator[Sandbox]:
    """service_app.py on port 8001 inside a Debian sandbox."""
    with client.sandbox(py_template) as sb:
        sb.write("/home/user/app.py", APP.read_text())
        sb.run(f"python3 /home/user/app.py {PYAPP} </dev/null >/tmp/app.log 2>&1 &")
        svc = service(server, sb.name, PYAPP)
        assert wait_until(
            lambda: get(svc["service_url"] + "headers", svc["token"]).status_code == 200, PROMPT
        ), sb.run("cat /tmp/app.log").stdout
        yield sb


@pytest.fixture(scope="module")
def app(server: Server, py_box: Sandbox) -> dict[str, str]:
    """A service URL of the python app (10 minutes)."""
    return service(server, py_box.name, PYAPP)


def cli(server: Server, *args: str) -> str:
    return subprocess.run(
        [*HUTCH, *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


# -- issuing -----------------------------------------------------------------------------------


@root
def test_issue_answers_the_four_fields(server: Server, bb_box: Sandbox) -> None:
    """All four fields, on every control prefix: service_url under /svc/<id>/<port>/, a browser_url
    carrying the token, an opaque token, and expires_at in the parseable ISO form."""
    for prefix in ("/v2/sandboxes", "/api/v2/sandboxes", "/api/v1/v2/sandboxes"):
        with server.http() as http:
            r = http.post(f"{prefix}/boxes/{bb_box.name}/service-url", json={"port": HTTPD})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"service_url", "browser_url", "token", "expires_at"}
        assert body["service_url"] == f"{server.service_url}/svc/{bb_box.id}/{HTTPD}/"
        assert body["browser_url"].startswith(
            f"{server.service_url}/svc-auth/{bb_box.id}/{HTTPD}?token="
        )
        assert body["browser_url"].endswith(body["token"])
        assert ISO.match(body["expires_at"]), body["expires_at"]
        expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
        left = (expires - datetime.now(UTC)).total_seconds()
        assert 590 < left <= 600
    left = service(server, bb_box.name, HTTPD, expires_in_seconds=86400)["expires_at"]
    assert 86390 < (datetime.fromisoformat(left) - datetime.now(UTC)).total_seconds() <= 86400


@root
def test_issue_refusals(server: Server, bb_box: Sandbox) -> None:
    """Out-of-range port or lifetime: 422; login-gated access and embedding: 501 naming the
    feature; an unknown sandbox or another workspace's: 404; a wrong key: 401."""
    for body in (
        {"port": 0},
        {"port": 65536},
        {"port": "80"},
        {"port": HTTPD, "expires_in_seconds": 0},
        {"port": HTTPD, "expires_in_seconds": 86401},
        {"port": HTTPD, "surprise": 1},
    ):
        with server.http() as http:
            r = http.post(f"/api/v2/sandboxes/boxes/{bb_box.name}/service-url", json=body)
        envelope(r, 422, "ValidationError")
    message = envelope(issue(server, bb_box.name, HTTPD, access="workspace"), 501, "NotImplemented")
    assert message.startswith("Login-gated service URLs")
    message = envelope(
        issue(server, bb_box.name, HTTPD, embed_origins=["https://a.example"]),
        501,
        "NotImplemented",
    )
    assert "embed_origins" in message
    assert "not found" in envelope(issue(server, "nobody-here", HTTPD), 404, "NotFound")

    workspace = f"svc-{secrets.token_hex(3)}"
    key = cli(server, "keys", "create", "--workspace", workspace, "--name", "svc-tests")
    with server.http(key) as http:
        assert wait_until(lambda: http.get("/api/v2/sandboxes/boxes").status_code == 200, PROMPT)
        r = http.post(f"/api/v2/sandboxes/boxes/{bb_box.name}/service-url", json={"port": HTTPD})
    envelope(r, 404, "NotFound")
    with server.http("wrong-key") as http:
        r = http.post(f"/api/v2/sandboxes/boxes/{bb_box.name}/service-url", json={"port": HTTPD})
    envelope(r, 401, "Unauthorized")


# -- HTTP --------------------------------------------------------------------------------------


@root
def test_get_through_service_url_with_the_header(server: Server, bb_box: Sandbox) -> None:
    """GET <service_url><path> with the token header reaches the service in the sandbox; the
    bare prefix redirects to the root with a slash."""
    svc = service(server, bb_box.name, HTTPD)
    r = get(svc["service_url"] + "index.html", svc["token"])
    assert r.status_code == 200 and r.text == "hello from busybox\n"
    assert r.headers["content-length"] == str(len(r.text))
    assert get(svc["service_url"], svc["token"]).text == "hello from busybox\n"
    bare = get(svc["service_url"].rstrip("/") + "?a=1", svc["token"])
    assert bare.status_code == 308
    assert bare.headers["location"] == f"{HTTPD}/?a=1"  # relative: /svc/<id>/8000/?a=1


@root
def test_browser_url_sets_the_cookie_and_redirects(server: Server, bb_box: Sandbox) -> None:
    """browser_url answers 303 to the service root with an HttpOnly, SameSite=Lax cookie scoped
    to that service's path, for the token's lifetime; the cookie alone then opens the service."""
    svc = service(server, bb_box.name, HTTPD, expires_in_seconds=120)
    r = get(svc["browser_url"])
    assert r.status_code == 303
    assert r.headers["location"] == svc["service_url"]
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "no-referrer"
    cookie = r.headers["set-cookie"]
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
    assert cookie.startswith(f"hutch_service_token={svc['token']};")
    assert attrs["path"] == f"Path=/svc/{bb_box.id}/{HTTPD}/"
    assert "httponly" in attrs and attrs["samesite"].lower() == "samesite=lax"
    assert "secure" not in attrs  # plain http here
    assert 110 <= int(attrs["max-age"].split("=")[1]) <= 120
    with httpx.Client(timeout=PROMPT, follow_redirects=True) as browser:
        page = browser.get(svc["browser_url"])
        assert page.status_code == 200 and page.text == "hello from busybox\n"
        assert browser.get(svc["service_url"] + "index.html").status_code == 200
        # The cookie is scoped to that port: another port's URL gets nothing from it.
        other = browser.get(f"{server.service_url}/svc/{bb_box.id}/{HTTPD + 1}/")
        assert other.status_code == 401


@root
def test_refused_tokens(server: Server, client: SandboxClient, bb_box: Sandbox) -> None:
    """No token, a forged one, an API key instead, a token of another sandbox or port, and a
    service token used as an API key: all refused with the envelope, over HTTP and WebSocket."""
    svc = service(server, bb_box.name, HTTPD)
    url = svc["service_url"]
    payload, mac = svc["token"].split(".")
    forged = payload + "." + ("A" if mac[0] != "A" else "B") + mac[1:]
    assert "needs its token" in envelope(get(url), 401, "Unauthorized")
    assert "signature" in envelope(get(url, forged), 401, "Unauthorized")
    assert "malformed" in envelope(get(url, "not-a-token"), 401, "Unauthorized")
    envelope(get(url, headers={"X-Api-Key": server.key}), 401, "Unauthorized")
    envelope(get(url, cookies={"hutch_service_token": forged}), 401, "Unauthorized")

    with client.sandbox("bb") as other_box:
        other = f"{server.service_url}/svc/{other_box.id}/{HTTPD}/"
        message = envelope(get(other, svc["token"]), 403, "Forbidden")
        assert f"port {HTTPD} of sandbox '{bb_box.id}'" in message
    message = envelope(
        get(f"{server.service_url}/svc/{bb_box.id}/{HTTPD + 1}/", svc["token"]), 403, "Forbidden"
    )
    assert f"not port {HTTPD + 1}" in message
    envelope(get(f"{server.service_url}/svc/{bb_box.id}/99999/", svc["token"]), 404, "NotFound")

    # A service token is no API key, on either plane.
    with server.http(svc["token"]) as http:
        envelope(http.get("/api/v2/sandboxes/boxes"), 401, "Unauthorized")
        envelope(http.post(f"/dp/{bb_box.id}/execute", json={"command": "id"}), 401, "Unauthorized")

    for headers, status in (({}, 401), ({TOKEN: forged}, 401), ({"X-Api-Key": server.key}, 401)):
        with pytest.raises(InvalidStatus) as info:
            ws_connect(ws_url(url) + "ws", additional_headers=headers, open_timeout=PROMPT)
        assert info.value.response.status_code == status
        assert json.loads(info.value.response.body)["detail"]["error"] == "Unauthorized"


@root
def test_expired_token_is_refused(server: Server, bb_box: Sandbox) -> None:
    """A token past its expires_in_seconds is refused, in the header, the browser_url and the
    cookie alike."""
    svc = service(server, bb_box.name, HTTPD, expires_in_seconds=1)
    deadline = datetime.fromisoformat(svc["expires_at"]).timestamp()
    assert wait_until(lambda: time.time() >= deadline, 3 * TIME_SCALE)
    assert "expired" in envelope(get(svc["service_url"], svc["token"]), 401, "Unauthorized")
    assert "expired" in envelope(get(svc["browser_url"]), 401, "Unauthorized")
    cookies = {"hutch_service_token": svc["token"]}
    envelope(get(svc["service_url"], cookies=cookies), 401, "Unauthorized")


@root
def test_stopped_and_deleted_sandbox(server: Server, client: SandboxClient) -> None:
    """A token outlives nothing: a stopped sandbox answers 400 NotReady (issuing too), a deleted
    one 404."""
    sb = client.create_sandbox("bb")
    try:
        sb.write("/www/index.html", "up\n")
        sb.run(f"httpd -p 127.0.0.1:{HTTPD} -h /www")
        svc = service(server, sb.name, HTTPD)
        assert get(svc["service_url"], svc["token"]).text == "up\n"
        client.stop_sandbox(sb.name)
        assert "is stopped" in envelope(get(svc["service_url"], svc["token"]), 400, "NotReady")
        assert "is stopped" in envelope(issue(server, sb.name, HTTPD), 400, "NotReady")
    finally:
        client.delete_sandbox(sb.name)
    assert "not found" in envelope(get(svc["service_url"], svc["token"]), 404, "NotFound")


@root
def test_nothing_listening_is_502_and_host_loopback_is_never_reached(
    server: Server, bb_box: Sandbox
) -> None:
    """A port nothing listens on in the sandbox answers 502 saying to start the service, even
    when the host's own loopback has a listener on that very port (never dialled)."""
    port = free_port()
    with socket.create_server(("127.0.0.1", port)) as host_service:
        host_service.setblocking(False)
        svc = service(server, bb_box.name, port)
        message = envelope(get(svc["service_url"], svc["token"]), 502, "NotReady")
        assert f"Nothing listens on port {port} in sandbox '{bb_box.name}'" in message
        assert "start your service" in message
        with pytest.raises(InvalidStatus) as info:
            ws_connect(
                ws_url(svc["service_url"]),
                additional_headers={TOKEN: svc["token"]},
                open_timeout=PROMPT,
            )
        assert info.value.response.status_code == 502
        with pytest.raises(BlockingIOError):
            host_service.accept()  # nobody knocked


@root
def test_the_service_never_sees_hutch_credentials(
    server: Server, py_box: Sandbox, app: dict[str, str]
) -> None:
    """The service gets neither the token (header or cookie), nor X-Api-Key, nor the web UI's
    session cookie, nor forged forwarding headers; it gets its own cookies, the original Host,
    and X-Forwarded-For/Proto/Host/Prefix."""
    headers = {
        TOKEN: app["token"],
        "X-Api-Key": server.key,
        "Cookie": f"theirs=1; hutch_session=ui-secret; hutch_service_token={app['token']}; b=2",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Prefix": "/evil",
        "Forwarded": "for=10.9.8.7",
        "X-Custom": "kept",
    }
    r = get(app["service_url"] + "headers", headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    seen = seen_headers(body)
    assert body["path"] == "/headers"
    assert app["token"] not in r.text and server.key not in r.text and "ui-secret" not in r.text
    assert TOKEN.lower() not in seen and "x-api-key" not in seen and "forwarded" not in seen
    assert seen["cookie"] == "theirs=1; b=2"
    assert seen["host"] == server.service_url.removeprefix("http://")
    assert seen["x-forwarded-host"] == server.service_url.removeprefix("http://")
    assert seen["x-forwarded-prefix"] == f"/svc/{py_box.id}/{PYAPP}"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-custom"] == "kept"
    assert seen["connection"] == "close"

    # The same over a WebSocket handshake.
    with ws_connect(
        ws_url(app["service_url"]) + "ws", additional_headers=headers, open_timeout=PROMPT
    ) as ws:
        ws.send("headers")
        raw = str(ws.recv(timeout=PROMPT))
    seen = seen_headers(json.loads(raw))
    assert app["token"] not in raw and server.key not in raw and "ui-secret" not in raw
    assert seen["cookie"] == "theirs=1; b=2"
    assert seen["x-forwarded-prefix"] == f"/svc/{py_box.id}/{PYAPP}"
    assert seen["host"] == server.service_url.removeprefix("http://")


@root
def test_bodies_stream_both_ways(app: dict[str, str]) -> None:
    """A 24 MiB chunked upload and a 48 MiB download without Content-Length pass intact."""

    def upload() -> Iterator[bytes]:
        for i in range(24):
            yield bytes([i]) * MiB

    expected = hashlib.sha256(b"".join(upload())).hexdigest()
    r = httpx.post(
        app["service_url"] + "echo",
        content=upload(),
        headers={TOKEN: app["token"]},
        timeout=PROMPT * 6,
    )
    assert r.status_code == 200, r.text
    assert r.json()["size"] == 24 * MiB and r.json()["sha256"] == expected
    size = 0
    with httpx.stream(
        "GET",
        app["service_url"] + f"big?n={48 * MiB}",
        headers={TOKEN: app["token"]},
        timeout=PROMPT * 6,
    ) as down:
        assert down.status_code == 200 and "content-length" not in down.headers
        for chunk in down.iter_bytes():
            size += len(chunk)
    assert size == 48 * MiB


@root
def test_redirects_and_cookies_stay_inside_the_service(
    py_box: Sandbox, app: dict[str, str]
) -> None:
    """The service's redirect to /x goes to <prefix>/x, its cookies are scoped to its prefix and
    this host, and origin-wide headers (service worker scope, HSTS) are dropped."""
    prefix = f"/svc/{py_box.id}/{PYAPP}"
    r = get(app["service_url"] + "redirect", app["token"])
    assert r.status_code == 302
    assert r.headers["location"] == f"{prefix}/headers"
    assert r.headers["set-cookie"] == f"app=1; Path={prefix}/; HttpOnly"
    assert "service-worker-allowed" not in r.headers
    assert "strict-transport-security" not in r.headers
    assert r.headers.get_list("date") and len(r.headers.get_list("date")) == 1


@root
def test_websocket_echo(app: dict[str, str]) -> None:
    """A WebSocket with the token header is relayed: subprotocol chosen by the service, text and
    binary (1 MiB) echoed, and close codes passed on both ways."""
    url = ws_url(app["service_url"]) + "ws"
    with ws_connect(
        url,
        additional_headers={TOKEN: app["token"]},
        subprotocols=["chat.v2", "chat.v1"],
        open_timeout=PROMPT,
        max_size=4 * MiB,
    ) as ws:
        assert ws.subprotocol == "chat.v2"
        ws.send("héllo")
        assert ws.recv(timeout=PROMPT) == "héllo"
        blob = os.urandom(MiB)
        ws.send(blob)
        assert ws.recv(timeout=PROMPT) == blob
        ws.send("close:4001")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=PROMPT)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "bye")

    with ws_connect(url, additional_headers={TOKEN: app["token"]}, open_timeout=PROMPT) as ws:
        ws.send("x")
        assert ws.recv(timeout=PROMPT) == "x"
        ws.close(4002, "client done")
    assert wait_until(
        lambda: get(app["service_url"] + "lastclose", app["token"]).json()["code"] == 4002, PROMPT
    )


@root
def test_websocket_with_the_browser_cookie(app: dict[str, str]) -> None:
    """The cookie browser_url sets opens the WebSocket too (browsers cannot send headers)."""
    cookie = get(app["browser_url"]).cookies["hutch_service_token"]
    with ws_connect(
        ws_url(app["service_url"]) + "ws",
        additional_headers={"Cookie": f"hutch_service_token={cookie}"},
        open_timeout=PROMPT,
    ) as ws:
        ws.send("via cookie")
        assert ws.recv(timeout=PROMPT) == "via cookie"


# -- the real SDK ------------------------------------------------------------------------------

SDK_SCRIPT = """
import json, sys
from langsmith.sandbox import SandboxClient
name, port = sys.argv[1], int(sys.argv[2])
client = SandboxClient()
svc = client.service(name, port)
page = svc.get("/index.html")
missing = svc.get("/no-such-file")
print(json.dumps({
    "status": page.status_code, "text": page.text, "missing": missing.status_code,
    "service_url": svc.service_url, "browser_url": svc.browser_url, "expires_at": svc.expires_at,
}))
"""


@root
@pytest.mark.parametrize("version", ["0.7.33", "0.15.1"])
def test_langsmith_sdk_service(server: Server, bb_box: Sandbox, version: str) -> None:
    """The public langsmith SDK: client.service(name, port).get("/…") returns the service's page."""
    python = langsmith_python(version, websockets=True)
    env = {**os.environ, "LANGSMITH_ENDPOINT": server.url, "LANGSMITH_API_KEY": server.key}
    out = subprocess.run(
        [str(python), "-c", SDK_SCRIPT, bb_box.name or "", str(HTTPD)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["status"] == 200 and got["text"] == "hello from busybox\n"
    assert got["missing"] == 404
    assert got["service_url"] == f"{server.service_url}/svc/{bb_box.id}/{HTTPD}/"
    assert ISO.match(got["expires_at"])


# -- the relay, in-process -----------------------------------------------------------------------


def _route() -> Route:
    return Route(
        sandbox_id="sb1",
        port=9000,
        origin="http://hutch.test",
        public_prefix="/svc/sb1/9000",
        local_prefix="/svc/sb1/9000",
        proto="http",
        host="hutch.test",
        client="192.0.2.1",
    )


async def _relay_to(
    upstream: Any, scope_extra: dict[str, Any], body: list[bytes], timeout: float
) -> tuple[list[dict[str, Any]], Any]:
    """Run relay_http against an in-process upstream; the ASGI messages sent, or the error."""
    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    messages = [
        {"type": "http.request", "body": part, "more_body": i < len(body) - 1}
        for i, part in enumerate(body or [b""])
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/svc/sb1/9000/x",
        "raw_path": b"/svc/sb1/9000/x",
        "query_string": b"",
        "headers": [],
        **scope_extra,
    }
    try:
        await relay_http(
            scope, receive, send, reader, writer, _route(), "box", response_timeout=timeout
        )
        return sent, None
    except ApiError as exc:
        return sent, exc
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_relay_504_when_the_service_never_answers() -> None:
    """A service that accepts but never answers gets 504 after the response timeout."""
    gone = asyncio.Event()

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read()  # until the relay hangs up
        gone.set()
        w.close()

    sent, exc = await _relay_to(silent, {}, [], timeout=0.2)
    assert sent == [] and exc is not None and exc.wire.status == 504
    assert "did not answer within" in exc.wire.message
    await asyncio.wait_for(gone.wait(), PROMPT)


async def test_relay_502_when_the_service_hangs_up() -> None:
    """A service that closes without an HTTP answer gets 502."""

    async def rude(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.close()

    sent, exc = await _relay_to(rude, {}, [], timeout=PROMPT)
    assert sent == [] and exc is not None and exc.wire.status == 502


async def test_relay_rewrites_the_request() -> None:
    """The path loses its prefix (encoding kept), a chunked body stays chunked, and the service
    sees Host, forwarding headers and its own cookies only."""
    got: dict[str, bytes] = {}

    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got["head"] = await r.readuntil(b"\r\n\r\n")
        got["body"] = await r.readuntil(b"0\r\n\r\n")
        w.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-Up: 1\r\nKeep-Alive: x\r\n\r\nok")
        await w.drain()
        w.close()

    sent, exc = await _relay_to(
        upstream,
        {
            "method": "POST",
            "path": "/svc/sb1/9000/a b/c",
            "raw_path": b"/svc/sb1/9000/a%20b%2Fc",
            "query_string": b"q=1&r=%2F",
            "headers": [
                (b"host", b"hutch.test"),
                (b"transfer-encoding", b"chunked"),
                (b"cookie", b"hutch_session=s; mine=1"),
                (b"x-api-key", b"k"),
                (b"connection", b"keep-alive, x-hop"),
                (b"x-hop", b"1"),
            ],
        },
        [b"abc", b"def"],
        timeout=PROMPT,
    )
    assert exc is None
    head = got["head"].decode().lower()
    assert head.startswith("post /a%20b%2fc?q=1&r=%2f http/1.1\r\nhost: hutch.test\r\n")
    assert "cookie: mine=1\r\n" in head and "hutch_session" not in head
    assert "x-api-key" not in head and "x-hop" not in head
    assert "transfer-encoding: chunked" in head and "connection: close" in head
    assert "x-forwarded-for: 192.0.2.1" in head and "x-forwarded-prefix: /svc/sb1/9000" in head
    assert got["body"] == b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"
    assert sent[0]["status"] == 201
    assert (b"x-up", b"1") in sent[0]["headers"]
    assert all(name != b"keep-alive" for name, _ in sent[0]["headers"])
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"ok"
    assert sent[-1]["more_body"] is False


def test_services_have_an_origin_of_their_own(server: Server) -> None:
    """Service URLs live on their own port: there the API and the web UI answer 404 (a
    service's page can never use the UI's session), and the API port serves no /svc paths."""
    assert server.service_url != server.url
    with httpx.Client(headers={"X-Api-Key": server.key}, timeout=30) as http:
        for path in ("/api/v2/sandboxes/boxes", "/", "/v2/sandboxes/templates"):
            r = http.get(server.service_url + path)
            assert r.status_code == 404 and "service URLs only" in r.text, (path, r.text)
        r = http.get(f"{server.url}/svc/abc/80/")
        assert r.status_code == 404 and "their own origin" in r.json()["detail"]["message"]
