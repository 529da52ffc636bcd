"""The public ``langsmith`` SDKs the conformance suite runs, each in a virtual environment cached
between runs under ``$HUTCH_CACHE_DIR/venvs`` (keyed by version and by whether ``websockets`` is
installed)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("HUTCH_CACHE_DIR", "/var/cache/hutch"))
#: Newest 0.15.x on PyPI (``pip index versions langsmith``) when the suite was last updated.
NEWEST_015 = "0.15.1"


def langsmith_python(version: str, *, websockets: bool) -> Path:
    """A python with ``langsmith==version`` (and ``websockets`` only when asked)."""
    flavour = "ws" if websockets else "nows"
    root = CACHE / "venvs" / f"langsmith-{version}-{flavour}"
    python = root / "bin" / "python"
    stamp = root / ".ready"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
        pkgs = [f"langsmith=={version}"] + (["websockets>=15"] if websockets else [])
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pkgs], check=True)
        stamp.touch()
    return python


@dataclass(frozen=True)
class Sdk:
    """One SDK under test and what the spec says it can do."""

    version: str
    websockets: bool

    @property
    def templates(self) -> bool:
        """The template era (0.7.x): templates, volumes, pools, ttl_seconds, HTTP fallback."""
        return self.version.startswith("0.7.")

    @property
    def newest(self) -> bool:
        """0.15: no templates, client-supplied command ids, no HTTP fallback (§9.1)."""
        return not self.templates

    @property
    def ws(self) -> bool:
        return self.websockets

    @property
    def http(self) -> bool:
        """Without websockets (a plain 0.7.x install): every run() goes over POST /execute."""
        return not self.websockets

    @property
    def fallback(self) -> bool:
        """run() falls back to POST /execute when the WebSocket upgrade fails (§4.6)."""
        return self.templates and self.websockets

    @property
    def start_stop(self) -> bool:
        """Start/stop and snapshots (0.7.33, §8, and 0.15)."""
        return self.version == "0.7.33" or self.newest

    @property
    def id(self) -> str:
        if self.newest:
            return f"langsmith-{self.version}"
        return f"langsmith-{self.version}-{'ws' if self.websockets else 'http'}"

    def python(self) -> Path:
        return langsmith_python(self.version, websockets=self.websockets)


#: 0.7.30 and 0.7.31 ship the same sandbox package; both are pinned because both are in use.
#: Each template-era version runs twice: as installed by default (no websockets, so HTTP
#: /execute) and with the ``sandbox`` extra's websockets.
SDKS = [
    *(Sdk(v, ws) for v in ("0.7.30", "0.7.31", "0.7.33") for ws in (False, True)),
    Sdk(NEWEST_015, True),
]
