"""The public langsmith 0.7.31 SDK, with websockets, tunnels through a hutch server unchanged."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.compat._venvs import langsmith_python
from tests.conftest import Server, free_port

pytestmark = pytest.mark.root
HERE = Path(__file__).parent


def test_langsmith_tunnel(server: Server, bb_template: str) -> None:
    """langsmith==0.7.31's sb.tunnel(): HTTP to a loopback-only service, two tunnels at once with
    three concurrent echoes, and a refused port closing the local connection."""
    python = langsmith_python("0.7.31", websockets=True)
    env = {**os.environ, "LANGSMITH_ENDPOINT": server.url, "LANGSMITH_API_KEY": server.key}
    ports = [free_port() for _ in range(4)]
    proc = subprocess.run(
        [str(python), str(HERE / "flow_tunnel.py"), bb_template, *map(str, ports)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["local_port"] == ports[0]
    assert got["http_body"] == f"{got['name']}\n"
    assert got["echo_ok"] == [True, True, True]
    assert got["second_tunnel_body"] == f"{got['name']}\n"
    assert got["refused_read"] == ""
    assert "nothing listening on port 7999" in proc.stderr
