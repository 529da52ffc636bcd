"""The public langsmith 0.7.31 SDK, without websockets (so it uses POST /execute), works
against a hutch server unchanged."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.compat._venvs import langsmith_python
from tests.conftest import Server

pytestmark = pytest.mark.root
HERE = Path(__file__).parent


def test_template_era_flow_over_http(server: Server) -> None:
    """template → sandbox → run → write/read → delete with langsmith==0.7.31 (no websockets)."""
    python = langsmith_python("0.7.31", websockets=False)
    env = {**os.environ, "LANGSMITH_ENDPOINT": server.url, "LANGSMITH_API_KEY": server.key}
    proc = subprocess.run(
        [str(python), str(HERE / "flow_template_era.py"), "ls-0731", "local/busybox"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["websockets"] is False
    assert got["template"] == ["ls-0731", "local/busybox:latest", "500m", "256Mi"]
    assert "ls-0731" in got["templates"]
    assert got["status"] == "ready"
    assert got["run"] == ["hello\n", "oops\n", 3, False]
    assert got["env_cwd"] == "1\n/tmp\n"
    assert got["script"] == "from-script\n"
    assert got["binary_ok"] is True
    assert got["text"] == "echo from-script\n"
    assert got["missing"] == ["ResourceNotFoundError", "file"]
    assert got["listed"] is True
    assert got["deleted"] is True
