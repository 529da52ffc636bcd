"""A service URL in real headless Chromium: browser_url signs the browser in to one service in a
sandbox, and that service's page talks back to it over a WebSocket through the proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, expect

from hutch import Sandbox, SandboxClient
from tests.conftest import TIME_SCALE, Server, wait_until

pytestmark = pytest.mark.root

APP = Path(__file__).resolve().parent.parent / "server" / "service_app.py"
PORT = 8001


@pytest.fixture(scope="module")
def web_box(server: Server, client: SandboxClient, py_template: str) -> Iterator[Sandbox]:
    """tests/server/service_app.py (a page and a WebSocket echo) on port 8001 in a sandbox."""
    with client.sandbox(py_template) as sb:
        sb.write("/home/user/app.py", APP.read_text())
        sb.run(f"python3 /home/user/app.py {PORT} </dev/null >/tmp/app.log 2>&1 &")
        svc = _service_url(server, sb)
        headers = {"X-Langsmith-Sandbox-Service-Token": svc["token"]}
        assert wait_until(
            lambda: httpx.get(svc["service_url"], headers=headers).status_code == 200,
            10 * TIME_SCALE,
        ), sb.run("cat /tmp/app.log").stdout
        yield sb


def _service_url(server: Server, sb: Sandbox) -> dict[str, str]:
    with server.http() as http:
        r = http.post(
            f"/api/v2/sandboxes/boxes/{sb.name}/service-url",
            json={"port": PORT, "expires_in_seconds": 300},
        )
    assert r.status_code == 200, r.text
    out: dict[str, str] = r.json()
    return out


def test_browser_url_opens_the_service_and_its_websocket(
    context: BrowserContext, server: Server, web_box: Sandbox, shots: Path
) -> None:
    """browser_url lands on the service's page with the token gone from the address bar and
    kept in an HttpOnly cookie for that service's path; the page's own WebSocket back to the
    service (same origin, cookie auth) gets its message echoed."""
    svc = _service_url(server, web_box)
    page = context.new_page()
    page.goto(svc["browser_url"])
    expect(page).to_have_url(svc["service_url"])
    expect(page.get_by_role("heading", name="hello from the sandbox")).to_be_visible()
    expect(page.locator("#echo")).to_have_text("echo: ping from the page")
    (cookie,) = [c for c in context.cookies() if c["name"] == "hutch_service_token"]
    assert cookie["path"] == f"/svc/{web_box.id}/{PORT}/"
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert page.evaluate("document.cookie") == ""  # the page's script cannot read the token
    page.screenshot(path=str(shots / "service-url.png"))

    # Without the cookie (a fresh context), the same address is refused.
    assert httpx.get(svc["service_url"], timeout=30).status_code == 401
