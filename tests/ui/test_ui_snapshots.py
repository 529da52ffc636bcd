"""The Snapshots page and a sandbox's Capture and Open port in real headless Chromium against a
real server: create from an image, boot, capture, delete, and a service opened in a new tab."""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from hutch import Sandbox, SandboxClient
from hutch.client import ResourceNotFoundError
from tests.conftest import REPO, Server

pytestmark = pytest.mark.root

SNAP = "ui-snap"
CAPTURED = "ui-snap-captured"
HTTPD = 8000


def _row(page: Page, name: str):  # type: ignore[no-untyped-def]
    return page.locator(f"tbody tr[data-name='{name}']")


def _delete_snapshots(server: Server) -> None:
    with server.http() as http:
        r = http.get("/api/v2/sandboxes/snapshots", params={"limit": 500})
        for s in r.json()["snapshots"]:
            if s["name"] in (SNAP, CAPTURED):
                http.delete(f"/api/v2/sandboxes/snapshots/{s['id']}")


@pytest.fixture
def cleanup(server: Server, client: SandboxClient) -> Iterator[list[str]]:
    """Snapshots and the sandboxes booted in the flow are gone afterwards, whatever happened."""
    booted: list[str] = []
    yield booted
    for name in booted:
        with contextlib.suppress(ResourceNotFoundError):
            client.delete_sandbox(name)
    _delete_snapshots(server)


@pytest.fixture
def web_box(client: SandboxClient, bb_template: str) -> Iterator[Sandbox]:
    """busybox httpd on the sandbox's 127.0.0.1:8000 serving one page."""
    with client.sandbox(bb_template) as sb:
        sb.write("/www/index.html", "<h1>hello from busybox httpd</h1>\n")
        result = sb.run(f"httpd -p 127.0.0.1:{HTTPD} -h /www")
        assert result.exit_code == 0, result.stderr
        yield sb


def test_snapshot_create_boot_capture_delete(
    page: Page, server: Server, shots: Path, cleanup: list[str]
) -> None:
    """A snapshot made from an image gets ready with its tag, boots a sandbox that names it, whose
    capture shows up in the list, and Delete (after confirming) removes it."""
    page.get_by_role("link", name="Snapshots").click()
    expect(page.get_by_role("heading", name="Snapshots", exact=True)).to_be_visible()
    expect(page.locator("#snap-images option[value='local/busybox:latest']")).to_have_count(1)
    page.get_by_label("Name", exact=True).fill(SNAP)
    page.get_by_label("Image", exact=True).fill("local/busybox")
    page.get_by_label("Tag (optional)").fill("v1")
    page.get_by_label("Capacity in GiB (optional)").fill("1")
    page.get_by_role("button", name="Create snapshot").click()
    row = _row(page, SNAP)
    expect(row.locator(".status")).to_have_text("ready")
    expect(row.locator("td[data-label=Tags]")).to_have_text("v1")
    expect(row).to_contain_text("local/busybox")

    # Boot: a new sandbox from it, and its page.
    row.get_by_role("button", name=f"Boot a sandbox from {SNAP}").click()
    expect(page).to_have_url(re.compile(r"/sandboxes/[^/]+$"))
    booted = page.url.rsplit("/", 1)[1]
    cleanup.append(booted)
    with server.http() as http:
        snaps = http.get("/api/v2/sandboxes/snapshots").json()["snapshots"]
    (row_id,) = [s["id"] for s in snaps if s["name"] == SNAP]
    expect(page.locator(".details .snapshot-id")).to_have_text(row_id)
    expect(page.locator(".head-status .status")).to_have_text("ready")

    # Capture it from its page.
    page.get_by_label("Snapshot name", exact=True).fill(CAPTURED)
    page.get_by_label("Snapshot tag (optional)", exact=True).fill("first")
    page.get_by_role("button", name="Capture", exact=True).click()
    expect(
        page.get_by_role("status").filter(has_text=f"Snapshot {CAPTURED} captured")
    ).to_be_visible()
    page.get_by_role("link", name="See the snapshots").click()
    captured = _row(page, CAPTURED)
    expect(captured.locator(".status")).to_have_text("ready")
    expect(captured.locator("td[data-label=Tags]")).to_have_text("first")
    expect(captured.locator("td[data-label=Image]")).to_have_text("captured")
    page.screenshot(path=shots / "snapshots.png")
    shutil.copyfile(shots / "snapshots.png", REPO / "docs" / "ui-snapshots.png")

    # Delete asks first; Cancel keeps it, Delete removes it.
    captured.get_by_role("button", name=f"Delete snapshot {CAPTURED}").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()
    expect(captured).to_be_visible()
    captured.get_by_role("button", name=f"Delete snapshot {CAPTURED}").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(captured).to_have_count(0)
    expect(_row(page, SNAP)).to_be_visible()


def test_open_port_opens_the_service_in_a_new_tab(
    page: Page, context: BrowserContext, server: Server, web_box: Sandbox, shots: Path
) -> None:
    """Open port asks for a service URL and opens its browser_url in a new tab without an opener,
    on the service origin, showing the sandbox's page; a bad port shows the server's message."""
    page.goto(f"{server.url}/sandboxes/{web_box.name}")
    expect(page.locator(".head-status .status")).to_have_text("ready")
    page.get_by_label("Port", exact=True).fill(str(HTTPD))
    with context.expect_page() as new_tab:
        page.get_by_role("button", name="Open port", exact=True).click()
    tab = new_tab.value
    expect(tab.get_by_role("heading", name="hello from busybox httpd")).to_be_visible()
    assert re.search(rf"/svc/{web_box.id}/{HTTPD}/$", tab.url), tab.url
    assert not tab.url.startswith(server.url + "/"), "services have an origin of their own"
    assert tab.evaluate("window.opener") is None
    link = page.get_by_role("link", name=f"Open port {HTTPD} again")
    assert link.get_attribute("rel") == "noopener noreferrer"
    tab.close()
    page.screenshot(path=shots / "sandbox-open-port.png", full_page=True)

    # A bad port: the envelope's message, not a tab.
    page.get_by_label("Port", exact=True).fill("70000")
    page.locator("#service-port").evaluate("(el) => el.removeAttribute('max')")
    page.get_by_role("button", name="Open port", exact=True).click()
    expect(
        page.locator("#service-port ~ .error, form .error").filter(
            has_text=re.compile("port", re.I)
        )
    ).to_be_visible()
