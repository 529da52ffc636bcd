"""``hutch serve --service-domain``: every service gets an origin of its own,
``<sandbox id>-<port>.<domain>``, so a page of one sandbox's service cannot read another's in a
browser holding cookies for both (real headless Chromium, which sends ``*.localhost`` to the
loopback by itself). Without a browser: requests are routed by ``Host``, tokens stay scoped to
their sandbox and port, and the service port serves nothing by path alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import BrowserContext, expect

from tests.conftest import (
    TIME_SCALE,
    Server,
    data_dir_with_busybox,
    remove_all_sandboxes,
    start_server,
    stop_server,
    wait_until,
)

pytestmark = pytest.mark.root
APP = Path(__file__).resolve().parent.parent / "server" / "service_app.py"
PORT = 8002
DOMAIN = "svc.localhost"
API = "/api/v2/sandboxes"
TOKEN = "X-Langsmith-Sandbox-Service-Token"


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path, python_tar: Path
) -> Iterator[Server]:
    data = data_dir_with_busybox(tmp_path_factory.mktemp("svchosts"), busybox_tar)
    server = start_server(data, "--service-domain", DOMAIN)
    server.import_image("local/python:3.11", python_tar)
    try:
        yield server
    finally:
        stop_server(server)
        remove_all_sandboxes(data)


def ok(r: httpx.Response) -> Any:
    assert r.status_code < 300, (r.request.method, r.request.url.path, r.status_code, r.text)
    return r.json() if r.content else None


def via_loopback(url: str, **kw: Any) -> httpx.Response:
    """GET ``url`` by connecting to 127.0.0.1 with its host in ``Host`` (no wildcard DNS here)."""
    parts = urlsplit(url)
    headers = {"Host": parts.netloc, **kw.pop("headers", {})}
    local = url.replace(parts.netloc, f"127.0.0.1:{parts.port}", 1)
    return httpx.get(local, headers=headers, timeout=30, **kw)


@pytest.fixture(scope="module")
def services(srv: Server) -> Iterator[list[dict[str, str]]]:
    """Two sandboxes, each with tests/server/service_app.py on PORT, and a service URL each."""
    with srv.http() as http:
        ok(http.post(f"{API}/templates", json={"name": "py", "image": "local/python:3.11"}))
        urls = []
        for name in ("alpha", "beta"):
            sb = ok(http.post(f"{API}/boxes", json={"name": name, "template_name": "py"}))
            files = {"file": ("app.py", APP.read_bytes())}
            ok(http.post(f"/dp/{sb['id']}/upload", params={"path": "/root/app.py"}, files=files))
            command = f"python3 /root/app.py {PORT} </dev/null >/tmp/app.log 2>&1 &"
            ok(http.post(f"/dp/{sb['id']}/execute", json={"command": command}))
            body = {"port": PORT, "expires_in_seconds": 300}
            svc = ok(http.post(f"{API}/boxes/{name}/service-url", json=body))
            svc["id"] = sb["id"]
            assert wait_until(
                lambda svc=svc: (
                    via_loopback(svc["service_url"], headers={TOKEN: svc["token"]}).status_code
                    == 200
                ),
                10 * TIME_SCALE,
            )
            urls.append(svc)
        yield urls


def test_each_service_has_a_host_of_its_own(srv: Server, services: list[dict[str, str]]) -> None:
    """service_url and browser_url are on ``<id>-<port>.<domain>`` at the service port, with no
    path prefix; the service sees its own paths and Host."""
    for svc in services:
        parts = urlsplit(svc["service_url"])
        assert parts.hostname == f"{svc['id']}-{PORT}.{DOMAIN}" and parts.path == "/"
        assert urlsplit(svc["browser_url"]).path == "/.hutch/sign-in"
        r = via_loopback(svc["service_url"] + "headers", headers={TOKEN: svc["token"]})
        seen = r.json()
        assert seen["path"] == "/headers", seen
        assert dict((k.lower(), v) for k, v in seen["headers"])["host"] == parts.netloc, seen


def test_tokens_and_hosts_do_not_mix(srv: Server, services: list[dict[str, str]]) -> None:
    """Another sandbox's token on a service's host is 403; no token 401; the bare service port
    (path-based /svc URLs) and a host of another domain answer 404 saying where services are."""
    alpha, beta = services
    assert via_loopback(alpha["service_url"], headers={TOKEN: beta["token"]}).status_code == 403
    assert via_loopback(alpha["service_url"]).status_code == 401
    port = urlsplit(alpha["service_url"]).port
    bare = httpx.get(f"http://127.0.0.1:{port}/svc/{alpha['id']}/{PORT}/", timeout=30)
    assert bare.status_code == 404 and DOMAIN in bare.json()["detail"]["message"]
    other = httpx.get(
        f"http://127.0.0.1:{port}/",
        headers={"Host": f"{alpha['id']}-{PORT}.elsewhere.test", TOKEN: alpha["token"]},
        timeout=30,
    )
    assert other.status_code == 404


def test_a_service_page_cannot_read_another_service(
    context: BrowserContext, services: list[dict[str, str]]
) -> None:
    """Signed in to both services, the browser keeps one HttpOnly cookie per service host; a
    script on alpha's page reads alpha's own pages but not beta's (cross-origin, no CORS), while
    beta's page works on its own with its WebSocket."""
    alpha, beta = services
    page_b = context.new_page()
    page_b.goto(beta["browser_url"])
    expect(page_b.locator("#echo")).to_have_text("echo: ping from the page")
    page_a = context.new_page()
    page_a.goto(alpha["browser_url"])
    expect(page_a).to_have_url(alpha["service_url"])
    expect(page_a.locator("#echo")).to_have_text("echo: ping from the page")
    cookies = {c["domain"]: c for c in context.cookies() if c["name"] == "hutch_service_token"}
    assert set(cookies) == {urlsplit(s["service_url"]).hostname for s in services}
    assert all(c["path"] == "/" and c["httpOnly"] for c in cookies.values())
    own = page_a.evaluate("async () => (await fetch('/headers', {credentials: 'include'})).status")
    assert own == 200
    stolen = page_a.evaluate(
        """async (url) => {
            try { const r = await fetch(url, {credentials: 'include'}); return await r.text(); }
            catch (e) { return 'blocked: ' + e.name; }
        }""",
        beta["service_url"] + "headers",
    )
    assert stolen.startswith("blocked"), stolen
