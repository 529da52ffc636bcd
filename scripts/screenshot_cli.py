"""Screenshot of ``hutch sandbox ls`` for the docs (docs/cli-sandbox-ls.png).

Runs the real command against the server of ``HUTCH_ENDPOINT``/``HUTCH_API_KEY`` with colours
forced, renders its output as a terminal in HTML (rich's ``export_html``) and screenshots that
with Playwright's Chromium (``/usr/bin/chromium``, as the UI tests use).

    HUTCH_ENDPOINT=http://127.0.0.1:8080 HUTCH_API_KEY=... python scripts/screenshot_cli.py
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright
from rich.console import Console
from rich.terminal_theme import MONOKAI
from rich.text import Text

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
WIDTH = 104  # terminal columns


def command_output(args: list[str]) -> str:
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": str(WIDTH), "TERM": "xterm-256color"}
    proc = subprocess.run(
        [sys.executable, "-m", "hutch", *args], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"hutch {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def render_html(args: list[str], output: str) -> str:
    console = Console(
        record=True,
        file=io.StringIO(),  # recorded only, not printed
        width=WIDTH,
        force_terminal=True,
        color_system="truecolor",
    )
    console.print(Text.assemble(("$ ", "bold green"), ("hutch " + " ".join(args), "bold")))
    console.print(Text.from_ansi(output.rstrip("\n")))
    return console.export_html(theme=MONOKAI, inline_styles=True)


def screenshot(html: str, out: Path) -> None:
    page_html = (
        "<html><body style='margin:0;background:#272822'>"
        "<div id='term' style='display:inline-block;padding:16px 20px;"
        "font-size:15px;line-height:1.35'>"
        f"{html}</div></body></html>"
    )
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        page_file = Path(tmp) / "cli.html"
        page_file.write_text(page_html)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 600}, device_scale_factor=2)
            page.goto(page_file.as_uri())
            page.locator("#term").screenshot(path=str(out))
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "cli-sandbox-ls.png")
    ns = parser.parse_args()
    args = ["sandbox", "ls"]
    screenshot(render_html(args, command_output(args)), ns.out)
    print(f"wrote {ns.out}")


if __name__ == "__main__":
    main()
