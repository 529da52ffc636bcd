"""The documentation site builds with ``mkdocs build --strict``, has every page of its nav, and
every relative link and image in the built HTML resolves to a file of the site (and a
``#fragment`` to an element of that page). Needs no root and nothing from the network."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Pages the nav promises (use_directory_urls is off: ``server.md`` becomes ``server.html``).
PAGES = [
    "index",
    "server",
    "lifetimes",
    "snapshots",
    "networking",
    "images",
    "data-plane",
    "web-ui",
    "cli",
    "metrics",
    "security",
    "sdk",
    "api",
    "compatibility",
    "development",
]


class _Refs(HTMLParser):
    """The ``href``/``src`` references and the element ids of one page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("href", "src") and value is not None:
                self.refs.append((tag, value))


def _parse(page: Path) -> _Refs:
    parser = _Refs()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built with --strict into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # The hook imports this checkout's server (scripts/gen_openapi.py puts src/ first).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    config = str(ROOT / "mkdocs.yml")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", config, "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_every_page_is_built(site: Path) -> None:
    """Each page of the nav is in the site, with its title, and the search index lists it."""
    for name in PAGES:
        page = site / f"{name}.html"
        assert page.is_file(), name
        assert "<h1" in page.read_text(encoding="utf-8"), name
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    indexed = {doc["location"].split("#")[0] for doc in index["docs"]}
    assert {f"{name}.html" for name in PAGES if name != "index"} <= indexed


def test_relative_links_and_images_resolve(site: Path) -> None:
    """Every relative href/src of every page names a file of the site; every fragment names an
    element of the page it points at."""
    pages = {p: _parse(p) for p in site.rglob("*.html")}
    broken = []
    for page, parsed in pages.items():
        for tag, ref in parsed.refs:
            parts = urlsplit(ref)
            if parts.scheme or parts.netloc or ref.startswith(("//", "mailto:")):
                continue
            # 404.html links from the site's root (it is served for any path).
            base = site if parts.path.startswith("/") else page.parent
            path = unquote(parts.path).lstrip("/")
            target = page if not parts.path else (base / path).resolve()
            if parts.path.endswith("/"):
                target = target / "index.html"
            where = f"{page.relative_to(site)}: <{tag}> {ref}"
            if not target.is_relative_to(site.resolve()) or not target.is_file():
                broken.append(f"{where}: no such file")
                continue
            if parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{where}: no element with that id")
    assert not broken, "\n".join(broken)


def test_pages_carry_their_images_and_references(site: Path) -> None:
    """The UI screenshots are on their pages; the SDK and API references were generated, the
    SDK's with no reST role left as text."""
    web_ui = _parse(site / "web-ui.html")
    images = {ref for tag, ref in web_ui.refs if tag == "img"}
    assert {"ui-list.png", "ui-terminal.png", "ui-snapshots.png"} <= images
    sdk = _parse(site / "sdk.html").ids
    assert {"hutch.SandboxClient", "hutch.AsyncSandboxClient", "hutch.SandboxClientError"} <= sdk
    assert "hutch.SandboxClient.create_snapshot" in sdk  # inherited from the snapshots mixin
    sdk_html = (site / "sdk.html").read_text(encoding="utf-8")
    assert not re.search(r":(class|meth|func|attr|data):<code>", sdk_html)
    api = (site / "api.html").read_text(encoding="utf-8")
    assert "POST /v2/sandboxes/boxes" in api and "ErrorEnvelope" in api
    openapi = json.loads((site / "openapi.json").read_text(encoding="utf-8"))
    assert "/dp/{sandbox_id}/execute" in openapi["paths"]
