"""The public langsmith 0.7.31 SDK *with* websockets runs commands over ``/execute/ws`` against a
hutch server unchanged: streaming, callbacks, UTF-8 offsets, stdin, kill, reconnect with
offsets, timeout, env/cwd, PTY, a 3 MB stream, ``CommandNotFound``, and the HTTP fallback when
the upgrade is refused (spec §4, §4.8, Appendix B).

The flow runs once per module (``flow_streaming_0731.py`` in the SDK's venv); each test asserts
one checklist item of its observations.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.compat._venvs import langsmith_python
from tests.conftest import Server

pytestmark = pytest.mark.root
HERE = Path(__file__).parent
LANGSMITH = "0.7.31"
SDK = f"langsmith=={LANGSMITH} with websockets"


@pytest.fixture(scope="module")
def got(server: Server, bb_template: str) -> dict[str, Any]:
    python = langsmith_python(LANGSMITH, websockets=True)
    env = {**os.environ, "LANGSMITH_ENDPOINT": server.url, "LANGSMITH_API_KEY": server.key}
    proc = subprocess.run(
        [str(python), str(HERE / "flow_streaming_0731.py"), bb_template],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"{SDK}: {proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def item(got: dict[str, Any], name: str) -> Any:
    value = got[name]
    assert not (isinstance(value, dict) and "unexpected" in value), f"{SDK}, {name}: {value}"
    return value


def assert_contiguous(chunks: list[list[Any]]) -> None:
    """Each chunk starts at the byte offset where the previous one of its stream ended."""
    ends = {"stdout": 0, "stderr": 0}
    for stream, data, offset in chunks:
        assert offset == ends[stream], f"{SDK}: {stream} chunk {data!r} at {offset}"
        ends[stream] += len(data.encode())


def test_run_over_websocket_0731(got: dict[str, Any]) -> None:
    assert item(got, "run") == ["hello\n", "oops\n", 3, False], SDK
    # No command (outside the refused-upgrade check) fell back to HTTP /execute.
    assert got["http_fallbacks"]["direct"] == [], SDK


def test_prompt_close_after_exit_0731(got: dict[str, Any]) -> None:
    assert item(got, "round_trip") < 1.0, f"{SDK}: median run('true') took {got['round_trip']}s"


def test_callbacks_stream_live_0731(got: dict[str, Any]) -> None:
    cb = item(got, "callbacks")
    assert cb["result"] == ["a\nc\n", "b\n", 0], SDK
    assert "".join(d for d, _ in cb["stdout"]) == "a\nc\n", SDK
    assert "".join(d for d, _ in cb["stderr"]) == "b\n", SDK
    # "a" reached the callback while the command was still sleeping.
    first, last = cb["stdout"][0], cb["stdout"][-1]
    assert first[0].startswith("a") and last[1] - first[1] >= 0.3, f"{SDK}: {cb['stdout']}"


def test_wait_false_utf8_offsets_0731(got: dict[str, Any]) -> None:
    u = item(got, "utf8_offsets")
    assert len(u["command_id"]) >= 8 and isinstance(u["pid"], int), SDK
    assert u["result"] == ["a\nü€😀\n", "z\n", 0], SDK
    assert_contiguous(u["chunks"])
    # ü is 2 bytes, € 3 and 😀 4: after "a\n" (2) and "ü€😀\n" (10) stdout is at byte 12.
    assert next(c for c in u["chunks"] if c[1].startswith("ü"))[2] == 2, SDK
    assert u["last"] == [12, 2], SDK


def test_stdin_0731(got: dict[str, Any]) -> None:
    assert item(got, "stdin") == ["got:wörld\n", 0], SDK


def test_kill_then_reconnect_shows_137_0731(got: dict[str, Any]) -> None:
    k = item(got, "kill")
    assert k["first"] == ["stdout", "ready\n"], SDK
    # §4.4: kill closes the socket at once, so the iterator raises (no auto-reconnect).
    assert k["raised"] is not None, f"{SDK}: iteration after kill() did not raise"
    assert k["raised"]["type"] == "SandboxConnectionError", f"{SDK}: {k['raised']}"
    assert "closed unexpectedly" in k["raised"]["str"], SDK
    assert k["after"] == ["ready\n", 137], SDK
    assert k["seconds"] < 5, SDK


def test_reconnect_with_offsets_0731(got: dict[str, Any]) -> None:
    r = item(got, "reconnect_offsets")
    assert r["done"] == ["ü€😀", "XY", 0], SDK
    assert r["tail"] == ["€😀", "XY", 0], SDK  # stdout from byte 2: only "€😀"
    assert next(c for c in r["tail_chunks"] if c[0] == "stdout")[2] == 2, SDK
    assert_contiguous([c for c in r["tail_chunks"] if c[0] == "stderr"])
    assert r["full"] == ["ü€😀", "XY", 0], SDK
    assert r["end"] == ["", "Y", 0], SDK


def test_reconnect_unknown_id_command_not_found_0731(got: dict[str, Any]) -> None:
    e = item(got, "unknown_command")
    assert e is not None, f"{SDK}: reconnect to an unknown id did not raise"
    assert e["type"] == "SandboxOperationError", SDK
    assert e["error_type"] == "CommandNotFound", SDK
    assert e["operation"] == "reconnect", SDK
    assert e["str"] == f"Command not found: {'0' * 32} [CommandNotFound]", SDK


def test_timeout_0731(got: dict[str, Any]) -> None:
    t = item(got, "timeout")
    assert t is not None, f"{SDK}: run('sleep 5', timeout=1) did not raise"
    assert t["type"] == "CommandTimeoutError", SDK
    assert t["str"] == "Command timed out after 1 seconds [CommandTimeout]", SDK
    assert t["seconds"] < 4, SDK


def test_env_cwd_0731(got: dict[str, Any]) -> None:
    assert item(got, "env_cwd") == "1 ü\n/tmp\n", SDK


def test_pty_crlf_0731(got: dict[str, Any]) -> None:
    # stdout and stderr share the terminal: both arrive as stdout, with CRLF line ends.
    assert item(got, "pty") == ["tty\r\nerr\r\n", "", 0], SDK


def test_3mb_stream_0731(got: dict[str, Any]) -> None:
    b = item(got, "big_stream")
    assert b["bytes"] == 3_000_000 and b["identical"] and b["contiguous"], f"{SDK}: {b}"
    assert b["exit_code"] == 0, SDK
    # Well under the client's 1 MiB message limit (§4.1), so it arrives in many messages.
    assert b["max_chunk"] <= 64 * 1024 and b["chunks"] >= 3_000_000 // (64 * 1024), f"{SDK}: {b}"


def test_upgrade_403_falls_back_to_http_0731(got: dict[str, Any]) -> None:
    u = item(got, "upgrade_403")
    assert u["run"] == ["via-http\n", 4], SDK
    assert got["http_fallbacks"]["proxied"] == ["echo via-http; exit 4"], SDK
    # wait=False needs the WebSocket: no fallback, the refusal surfaces.
    assert u["wait_false"] is not None, SDK
    assert u["wait_false"]["type"] == "SandboxConnectionError", SDK
    assert "WebSocket upgrade rejected by server (HTTP 403)" in u["wait_false"]["str"], SDK
