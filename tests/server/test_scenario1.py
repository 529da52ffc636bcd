"""Scenario 1 of the SDK guide on the locally built Debian Python image, as `make demo` runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hutch import SandboxClient
from tests.conftest import REPO, Server

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def python_template(server: Server, client: SandboxClient, python_tar: Path) -> str:
    server.import_image("local/python:3.11", python_tar)
    client.create_template(name="python-sandbox", image="local/python:3.11")
    return "python-sandbox"


def test_python_print_2_plus_2(client: SandboxClient, python_template: str) -> None:
    """run("python -c 'print(2 + 2)'") gives stdout "4\\n" and success, inside the sandbox."""
    with client.sandbox(template_name=python_template) as sb:
        result = sb.run("python -c 'print(2 + 2)'")
        assert result.stdout == "4\n"
        assert result.success
        # bash exists in this image, so the default shell is used without fallback.
        assert sb.run("echo $BASH_VERSION").stdout.strip() != ""
        assert sb.run("hostname").stdout == f"{sb.name}\n"


def test_hello_world_and_exit_1(client: SandboxClient, python_template: str) -> None:
    """Scenario 2: echo gives exact stdout and empty stderr; `exit 1` is a failure with code 1."""
    with client.sandbox(template_name=python_template) as sb:
        r = sb.run("echo 'Hello, World!'")
        assert (r.stdout, r.stderr, r.exit_code) == ("Hello, World!\n", "", 0)
        r = sb.run("exit 1")
        assert (r.success, r.exit_code) == (False, 1)


def test_files_scenario(client: SandboxClient, python_template: str) -> None:
    """Scenario 8: write /app/script.py, run it, read it back; binary bytes round-trip."""
    with client.sandbox(template_name=python_template) as sb:
        sb.write("/app/script.py", "print('from script')\n")
        assert sb.run("python /app/script.py").stdout == "from script\n"
        assert sb.read("/app/script.py") == b"print('from script')\n"
        sb.write("/app/blob.bin", b"\x00\x01\xfe\xff")
        assert sb.read("/app/blob.bin") == b"\x00\x01\xfe\xff"


def test_demo_script_prints_4(server: Server, python_template: str) -> None:
    """scripts/demo.py's scenario prints exactly "4" on stdout against a running server."""
    code = (
        "import sys; sys.path.insert(0, 'scripts'); import demo; "
        f"sys.exit(demo.scenario_1({server.url!r}, {server.key!r}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "4\n"
    assert "pid 1 is /dev/.hutch-init" in proc.stderr
