"""Virtual environments with pinned public ``langsmith`` SDKs, cached between runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("HUTCH_CACHE_DIR", "/var/cache/hutch"))


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
