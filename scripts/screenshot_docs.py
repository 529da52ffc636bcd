"""A screenshot of the documentation site's home page, as ``docs/site-home.png``.

    python scripts/screenshot_docs.py [--site site] [--output docs/site-home.png]

Serves the built site (``make docs`` first) on an OS-chosen loopback port from a thread of this
process, and loads its home page in Debian's ``/usr/bin/chromium`` through Playwright (launched
with tests/ui's flags: Playwright never downloads a browser here). The page is loaded over HTTP, not
from the file system, so it renders as readers see it: search, palette and assets included.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
VIEWPORT = {"width": 1280, "height": 800}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def screenshot(site: Path, output: Path) -> None:
    # The browser and its flags of the web UI's tests: one place says how Chromium runs here.
    sys.path.insert(0, str(ROOT))
    from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS

    if not (site / "index.html").is_file():
        raise SystemExit(f"{site}/index.html is missing: build the site first (make docs)")
    handler = functools.partial(_Quiet, directory=str(site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        server = threading.Thread(target=httpd.serve_forever, name="docs-http", daemon=True)
        server.start()
        try:
            url = f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport=VIEWPORT)
                    page.goto(url, wait_until="networkidle")
                    # The nav and the first heading: the theme's CSS and JavaScript are loaded.
                    page.locator("h1").first.wait_for()
                    page.screenshot(path=str(output))
                finally:
                    browser.close()
        finally:
            httpd.shutdown()
            server.join()
    print(f"wrote {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=ROOT / "site")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "site-home.png")
    args = parser.parse_args()
    screenshot(args.site, args.output)


if __name__ == "__main__":
    main()
