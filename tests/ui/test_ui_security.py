"""Who may use the web UI: nothing without a session, nothing cross-site with one, and nothing of
another workspace's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, expect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from hutch import SandboxClient
from hutch.server._auth import KeyRing
from hutch.store import Database
from tests.conftest import Server, remove_all_sandboxes, start_server, stop_server
from tests.ui.conftest import cookie_client, in_thread, session_cookie, sign_in

pytestmark = pytest.mark.root

PAGES = ("/", "/templates", "/sandboxes/anything")
UI_API = (
    "/ui/api/session",
    "/ui/api/sandboxes",
    "/ui/api/sandboxes/anything",
    "/ui/api/sandboxes/anything/commands",
    "/ui/api/images",
)


def _ws_status(server: Server, sandbox_id: str, headers: dict[str, str]) -> int:
    url = f"ws://{server.url.removeprefix('http://')}/dp/{sandbox_id}/execute/ws"
    with pytest.raises(InvalidStatus) as info, connect(url, additional_headers=headers):
        pass
    return info.value.response.status_code


@pytest.mark.parametrize("cookie", [None, "forged-token"])
def test_no_session_gets_nothing(server: Server, cookie: str | None) -> None:
    """Without a valid session, pages redirect to sign-in and the UI's API answers 401."""
    headers = {"Cookie": f"hutch_session={cookie}"} if cookie else {}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
        for path in PAGES:
            r = http.get(path)
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/sign-in?next=%2F"), path
            assert "<script" not in r.text
        for path in UI_API:
            r = http.get(path)
            assert r.status_code == 401, path
            assert r.json()["detail"]["error"] == "Unauthorized"
        r = http.get("/api/v2/sandboxes/boxes")
        assert r.status_code == 401
    headers = {"Origin": server.url} | ({"Cookie": f"hutch_session={cookie}"} if cookie else {})
    assert _ws_status(server, "0" * 32, headers) == 401


def test_sign_in_page_and_assets_need_no_session(server: Server) -> None:
    """The sign-in page and the bundle load without a session; pages carry a strict CSP."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        page = http.get("/sign-in")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        script = page.text.split('<script type="module" src="')[1].split('"')[0]
        asset = http.get(script)
        assert asset.status_code == 200
        assert "javascript" in asset.headers["content-type"]


def test_cross_origin_requests_with_a_valid_cookie_are_refused(
    context: BrowserContext, server: Server, client: SandboxClient, bb_template: str
) -> None:
    """A request that changes state with the session cookie must come from the UI's own
    origin: another site, another port of the same host, or no Origin at all gets 403 and
    nothing happens; the same request from the UI's origin works. Reads the browser marks as
    started by another origin are refused too."""
    sign_in(context.new_page(), server)
    cookie = session_cookie(context)
    body = {"name": "ui-xorigin", "image": "local/busybox"}
    for origin in ("http://evil.example", "http://127.0.0.1:1", "null", None):
        with cookie_client(server, cookie, origin=origin) as http:
            r = http.post("/api/v2/sandboxes/templates", json=body)
            assert r.status_code == 403, origin
            assert r.json()["detail"]["error"] == "Forbidden"
            assert "Cross-site request refused" in r.json()["detail"]["message"]
            assert http.delete(f"/api/v2/sandboxes/templates/{bb_template}").status_code == 403
            assert http.delete("/ui/api/session").status_code == 403  # no signing out either
            signing_in = http.post("/ui/api/session", json={"api_key": server.key})
            assert signing_in.status_code == 403
            assert "set-cookie" not in signing_in.headers
    assert "ui-xorigin" not in [t.name for t in client.list_templates()]
    assert bb_template in [t.name for t in client.list_templates()]

    with client.sandbox(bb_template) as sb:
        headers = {"Cookie": f"hutch_session={cookie}", "Origin": "http://127.0.0.1:1"}
        assert _ws_status(server, sb.id, headers) == 403

    with cookie_client(server, cookie) as http:  # reads another origin's page started
        for site in ("same-site", "cross-site"):
            r = http.get("/ui/api/sandboxes", headers={"Sec-Fetch-Site": site})
            assert r.status_code == 403, site
        assert http.get("/ui/api/sandboxes", headers={"Sec-Fetch-Site": "same-origin"}).is_success

    with cookie_client(server, cookie, origin=server.url) as http:
        assert http.get("/ui/api/sandboxes").status_code == 200  # the session is still valid
        created = http.post("/api/v2/sandboxes/templates", json=body)
        assert created.status_code == 201, created.text
        assert http.delete("/api/v2/sandboxes/templates/ui-xorigin").status_code == 204


# -- workspaces --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_workspaces(
    tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path
) -> Iterator[tuple[Server, str, str]]:
    """A server whose store has a key in workspace ``alpha`` and one in ``beta``."""
    data = tmp_path_factory.mktemp("ui-ws") / "data"
    data.mkdir()

    async def keys() -> None:
        db = Database.in_dir(data)
        await db.migrate()
        ring = KeyRing(db)
        await ring.add("key-alpha-0123456789", workspace="alpha")
        await ring.add("key-beta-0123456789", workspace="beta")
        await db.aclose()

    in_thread(asyncio.run, keys())
    srv = start_server(data)
    try:
        srv.import_image("local/busybox", busybox_tar)
        yield srv, "key-alpha-0123456789", "key-beta-0123456789"
    finally:
        stop_server(srv)
        in_thread(remove_all_sandboxes, data)


def test_a_session_sees_only_its_workspace(
    context: BrowserContext, two_workspaces: tuple[Server, str, str]
) -> None:
    """Signed in with workspace alpha's key, beta's sandbox is neither listed nor reachable:
    its page says it does not exist, its commands and terminal are refused."""
    server, alpha, beta = two_workspaces
    with server.client(api_key=beta) as theirs:
        theirs.create_template("bb", "local/busybox")
        box = theirs.create_sandbox("bb", name="beta-box")
    page = context.new_page()
    sign_in(page, server, key=alpha)
    expect(page.locator(".who")).to_have_text("workspace alpha")
    expect(page.get_by_text("No sandboxes yet")).to_be_visible()
    expect(page.locator("tr[data-name='beta-box']")).to_have_count(0)

    page.goto(f"{server.url}/sandboxes/beta-box")
    expect(page.get_by_role("alert")).to_contain_text("Sandbox beta-box no longer exists")

    cookie = session_cookie(context)
    with cookie_client(server, cookie, origin=server.url) as http:
        assert http.get("/ui/api/sandboxes").json() == {"sandboxes": []}
        assert http.get("/ui/api/sandboxes/beta-box/commands").status_code == 404
        assert http.get("/api/v2/sandboxes/boxes/beta-box").status_code == 404
        assert http.delete("/api/v2/sandboxes/boxes/beta-box").status_code == 404
    headers = {"Cookie": f"hutch_session={cookie}", "Origin": server.url}
    assert _ws_status(server, box.id, headers) == 404
    with server.client(api_key=beta) as theirs:
        assert theirs.get_sandbox("beta-box").status == "ready"


def test_sign_in_sends_a_signed_in_browser_on_but_never_off_site(server: Server) -> None:
    """Signed in, /sign-in redirects to its ``next`` if that is a path of this site, else to /."""
    with httpx.Client(base_url=server.url, headers={"Origin": server.url}, timeout=30) as http:
        assert http.post("/ui/api/session", json={"api_key": "wrong"}).status_code == 401
        r = http.post("/ui/api/session", json={"api_key": server.key})
        assert r.status_code == 204
        assert "httponly" in r.headers["set-cookie"].lower()
        for target, expected in [
            ("/templates", "/templates"),
            ("//evil.example/x", "/"),
            ("/\\evil.example", "/"),
            ("https://evil.example/", "/"),
        ]:
            r = http.get("/sign-in", params={"next": target})
            assert (r.status_code, r.headers["location"]) == (303, expected), target
