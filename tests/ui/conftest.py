"""Fixtures of the web UI tests: Debian's headless Chromium driven by Playwright, signed in.

The browser is the real ``/usr/bin/chromium`` (``make test`` installs the Debian package);
Playwright only drives it and never downloads a browser of its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from tests.conftest import OUTPUT, TIME_SCALE, Server

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
#: As root Chromium needs --no-sandbox; the rest keeps it off the network (it has none here).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = OUTPUT / "ui"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 800}
#: Milliseconds Playwright waits for an expectation.
WAIT_MS = int(15_000 * TIME_SCALE)

expect.set_options(timeout=WAIT_MS)


# Module scope: while Playwright's sync API is running, this thread has a running event loop, so
# asyncio.run() (other tests, fixture teardowns) fails; it must not outlive the UI modules.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install the Debian package chromium (make test does)")
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="session")
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport=DESKTOP)
    ctx.set_default_timeout(WAIT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


def sign_in(page: Page, server: Server, key: str | None = None) -> None:
    """Sign in through the form, with the keyboard only, and land on the sandbox list."""
    page.goto(f"{server.url}/")
    expect(page).to_have_url(re.compile(r"/sign-in\?next=%2F$"))
    expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.type(key or server.key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Sandboxes", exact=True)).to_be_visible()


@pytest.fixture
def page(context: BrowserContext, server: Server, bb_template: str) -> Page:
    """A signed-in page on the shared test server, which has the ``bb`` busybox template."""
    page = context.new_page()
    sign_in(page, server)
    return page


def in_thread(fn: Callable[..., T], *args: object) -> T:
    """Run ``fn`` in a thread of its own (it may call asyncio.run(); see ``playwright``)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def session_cookie(context: BrowserContext) -> str:
    (value,) = [c["value"] for c in context.cookies() if c["name"] == "hutch_session"]
    return value


def cookie_client(server: Server, cookie: str, origin: str | None = None) -> httpx.Client:
    """HTTP as the browser's session would be sent: the cookie, no API key."""
    headers = {"Cookie": f"hutch_session={cookie}"}
    if origin is not None:
        headers["Origin"] = origin
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


def terminal_line(page: Page, pattern: str) -> None:
    """Wait until a line on the terminal's screen matches ``pattern`` (a JS regex, whole line)."""
    page.wait_for_function(
        """(pattern) => {
            const rows = document.querySelector(".term-host .xterm-rows");
            if (!rows) return false;
            const re = new RegExp("^" + pattern + "\\\\s*$");
            return Array.from(rows.children).some((row) => re.test(row.textContent));
        }""",
        arg=pattern,
        timeout=WAIT_MS,
    )


def terminal_size(page: Page) -> tuple[int, int]:
    host = page.locator(".term-host")
    return int(host.get_attribute("data-rows") or 0), int(host.get_attribute("data-cols") or 0)
