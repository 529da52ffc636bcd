"""The web UI in real headless Chromium against a real server: sign-in, the sandbox list, the
in-browser terminal, templates, and the errors a person meets (wrong key, expired session,
sandbox gone)."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from hutch import SandboxClient
from hutch.client import ResourceNotFoundError
from tests.conftest import Server
from tests.ui.conftest import (
    DESKTOP,
    PHONE,
    cookie_client,
    session_cookie,
    sign_in,
    terminal_line,
    terminal_size,
)

pytestmark = pytest.mark.root

TEMPLATE = "ui-bb"


def _row(page: Page, name: str):  # type: ignore[no-untyped-def]
    return page.locator(f"tbody tr[data-name='{name}']")


def _no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def _type_line(page: Page, text: str) -> None:
    page.keyboard.type(text)
    page.keyboard.press("Enter")


@pytest.fixture
def cleanup(client: SandboxClient):  # type: ignore[no-untyped-def]
    """Sandboxes and the template the flow makes are gone afterwards, whatever happened."""
    yield
    for name in ("ui-shell", "ui-worker"):
        with contextlib.suppress(ResourceNotFoundError):
            client.delete_sandbox(name)
    with contextlib.suppress(ResourceNotFoundError):
        client.delete_template(TEMPLATE)


def test_flow_list_terminal_reload_delete(
    page: Page, server: Server, client: SandboxClient, shots: Path, cleanup: None
) -> None:
    """Create a template and a sandbox, use its terminal (42, colours, Ctrl-C, resize, reload,
    a second terminal), then delete sandbox and template; the list follows without reloads."""
    # Templates page: create one; the image field offers the store's images.
    page.get_by_role("link", name="Templates").click()
    expect(page.locator("#tpl-images option[value='local/busybox:latest']")).to_have_count(1)
    page.get_by_label("Name").fill(TEMPLATE)
    page.get_by_label("Image").fill("local/busybox")
    page.get_by_label("CPU").fill("250m")
    page.get_by_label("Memory").fill("128Mi")
    page.get_by_role("button", name="Create template").click()
    expect(_row(page, TEMPLATE)).to_contain_text("local/busybox:latest")

    # The list: a sandbox made elsewhere shows up without a reload; one made with the form too.
    page.get_by_role("link", name="Sandboxes").click()
    client.create_sandbox(TEMPLATE, name="ui-worker", wait_for_ready=False)
    expect(_row(page, "ui-worker")).to_be_visible()
    page.get_by_label("Template").select_option(TEMPLATE)
    page.get_by_label("Name (optional)").fill("ui-shell")
    page.get_by_role("button", name="Create sandbox").click()
    row = _row(page, "ui-shell")
    expect(row.locator(".status")).to_have_text("ready")
    expect(row).to_contain_text(TEMPLATE)
    expect(row).to_contain_text("250m CPU · 128Mi")
    expect(row.locator("td[data-label=TTL]")).to_have_text("none")
    expect(row.locator("td[data-label=Age]")).to_have_text(re.compile(r"^\d+s$"))
    expect(_row(page, "ui-worker").locator(".status")).to_have_text("ready")
    page.screenshot(path=shots / "list.png")

    page.get_by_label("Filter by name").fill("shell")
    expect(_row(page, "ui-shell")).to_be_visible()
    expect(_row(page, "ui-worker")).to_be_hidden()
    page.get_by_label("Filter by name").fill("")
    expect(_row(page, "ui-worker")).to_be_visible()

    page.set_viewport_size(PHONE)
    expect(page.locator("thead")).to_be_hidden()  # rows become cards with labelled cells
    expect(row.locator("td[data-label=Status]")).to_be_visible()
    assert _no_horizontal_scroll(page)
    page.screenshot(path=shots / "list-phone.png", full_page=True)
    page.set_viewport_size(DESKTOP)

    # The sandbox page and its terminal.
    row.get_by_role("link", name="ui-shell").click()
    expect(page.get_by_role("heading", name="ui-shell")).to_be_visible()
    expect(page.locator(".details")).to_contain_text("250m CPU · 128Mi")
    page.get_by_role("button", name="New terminal").click()
    expect(page.locator(".term-state")).to_have_text("Connected")
    term_id = re.search(r"[?&]t=(term-[0-9a-f]{12})", page.url)
    assert term_id, page.url
    first = term_id.group(1)

    _type_line(page, "echo $((6*7))")
    terminal_line(page, "42")
    _type_line(page, r"printf '\033[31mred-text\033[0m\n'")
    expect(page.locator(".xterm-rows span.xterm-fg-1", has_text="red-text")).to_be_visible()
    _type_line(page, "sleep 60")
    page.keyboard.press("Control+C")
    _type_line(page, "echo after-$((1+1))")
    terminal_line(page, "after-2")

    # Keyboard: the terminal has the focus; Shift+Tab leaves it (no keyboard trap).
    textarea = page.locator(".term-host textarea")
    expect(textarea).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(textarea).not_to_be_focused()
    page.locator(".term-host").click()
    expect(textarea).to_be_focused()

    rows, cols = terminal_size(page)
    _type_line(page, "stty size")
    terminal_line(page, f"{rows} {cols}")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=shots / "terminal.png")

    # The command list names the terminal's session.
    command = page.locator(f"tr[data-command-id='{first}']")
    expect(command).to_contain_text("terminal")
    expect(command).to_contain_text("running")

    # A smaller window: the PTY follows.
    page.set_viewport_size(PHONE)
    page.wait_for_function(
        "([r, c]) => { const h = document.querySelector('.term-host');"
        " return h.dataset.rows !== String(r) || h.dataset.cols !== String(c); }",
        arg=[rows, cols],
    )
    small = terminal_size(page)
    assert small[1] < cols
    page.locator(".term-host").click()
    _type_line(page, "stty size")
    terminal_line(page, f"{small[0]} {small[1]}")
    assert _no_horizontal_scroll(page)
    page.set_viewport_size(DESKTOP)

    # A reload re-attaches to the same shell and replays its scrollback.
    page.reload()
    expect(page.locator(".term-state")).to_have_text("Connected")
    assert f"t={first}" in page.url
    terminal_line(page, "42")
    terminal_line(page, "after-2")

    # A second terminal; switching back shows the first one's output again.
    page.get_by_role("button", name="New terminal").click()
    expect(page.get_by_role("tab")).to_have_count(2)
    expect(page.locator(".term-state")).to_have_text("Connected")
    _type_line(page, "echo second-$((2*3))")
    terminal_line(page, "second-6")
    page.get_by_role("tab", name=first.removeprefix("term-")).click()
    expect(page.locator(".term-state")).to_have_text("Connected")
    terminal_line(page, "42")

    # Templates page: the template in use cannot be deleted, and the page says why.
    page.get_by_role("link", name="Templates").click()
    _row(page, TEMPLATE).get_by_role("button", name=f"Delete template {TEMPLATE}").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.get_by_role("alert").filter(has_text="is used by sandboxes")).to_be_visible()
    expect(_row(page, TEMPLATE)).to_be_visible()

    # Delete with confirmation: Cancel keeps it, Delete removes it.
    page.get_by_role("link", name="Sandboxes").click()
    delete = _row(page, "ui-shell").get_by_role("button", name="Delete sandbox ui-shell")
    delete.click()
    expect(page.get_by_role("dialog")).to_contain_text("Delete sandbox ui-shell?")
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(_row(page, "ui-shell")).to_be_visible()
    delete.click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(_row(page, "ui-shell")).to_have_count(0)
    with pytest.raises(ResourceNotFoundError):
        client.get_sandbox("ui-shell")

    # A sandbox deleted while its page is open: the page says it is gone.
    page.goto(f"{server.url}/sandboxes/ui-worker")
    expect(page.get_by_role("button", name="New terminal")).to_be_enabled()
    client.delete_sandbox("ui-worker")
    expect(page.get_by_role("alert")).to_contain_text("Sandbox ui-worker no longer exists")
    expect(page.get_by_role("button", name="New terminal")).to_be_disabled()

    # Nothing uses the template any more: it can go.
    page.get_by_role("link", name="Templates").click()
    _row(page, TEMPLATE).get_by_role("button", name=f"Delete template {TEMPLATE}").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(_row(page, TEMPLATE)).to_have_count(0)


def test_wrong_key_is_refused(context: BrowserContext, server: Server) -> None:
    """A wrong API key gets an error on the sign-in form and no session cookie."""
    page = context.new_page()
    page.goto(f"{server.url}/sign-in")
    page.get_by_label("API key").fill("not-the-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("That API key is not valid")
    expect(page).to_have_url(f"{server.url}/sign-in")
    assert not [c for c in context.cookies() if c["name"] == "hutch_session"]


def test_session_cookie_attributes(context: BrowserContext, server: Server) -> None:
    """The cookie is HttpOnly and SameSite=Strict, and the page's script cannot read it."""
    page = context.new_page()
    sign_in(page, server)
    (cookie,) = [c for c in context.cookies() if c["name"] == "hutch_session"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False  # plain http on loopback
    assert "hutch_session" not in page.evaluate("document.cookie")


def test_sign_out_ends_the_session_on_the_server(context: BrowserContext, server: Server) -> None:
    """Signing out returns to the sign-in page, and the old cookie value no longer works."""
    page = context.new_page()
    sign_in(page, server)
    cookie = session_cookie(context)
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{server.url}/sign-in")
    with cookie_client(server, cookie) as http:
        assert http.get("/ui/api/sandboxes").status_code == 401
        assert http.get("/").status_code == 303


def test_expired_session_goes_back_to_sign_in(context: BrowserContext, server: Server) -> None:
    """When the session ends behind the page's back, the page asks to sign in again, then
    returns to where it was."""
    page = context.new_page()
    sign_in(page, server)
    # The templates page loads its list and the image names once; both must have answered
    # before the session ends, or one of them meets the 401 and the page reacts before the reload.
    with (
        page.expect_response(lambda r: r.url.endswith("/api/v2/sandboxes/templates")),
        page.expect_response(lambda r: r.url.endswith("/ui/api/images")),
    ):
        page.get_by_role("link", name="Templates").click()
    with cookie_client(server, session_cookie(context), origin=server.url) as http:
        assert http.delete("/ui/api/session").status_code == 204
    page.reload()  # the templates page polls nothing: a reload meets the expired session
    expect(page).to_have_url(re.compile(r"/sign-in\?next=%2Ftemplates$"))
    page.get_by_label("API key").fill(server.key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Templates")).to_be_visible()

    # While a page polls: it notices on its own.
    page.get_by_role("link", name="Sandboxes").click()
    with cookie_client(server, session_cookie(context), origin=server.url) as http:
        assert http.delete("/ui/api/session").status_code == 204
    expect(page).to_have_url(re.compile(r"/sign-in\?expired=1&next=%2F$"))
    expect(page.get_by_role("status")).to_contain_text("session has expired")
