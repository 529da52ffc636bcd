"""The public langsmith 0.15.x SDK (newest on PyPI when written) runs its core exec flow against a
hutch server unchanged (spec §9.1): client-supplied ``command_id`` with get-or-create,
``close_stdin``, stdin, ``wait=False`` iteration, reconnect, kill, timeout, files, delete.

0.15 has no templates, so the sandbox is created here with the hutch SDK (template ``bb``) and
its name handed to ``flow_core_015.py``, which runs once per module in the SDK's venv; each test
asserts one item of its observations.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hutch import ResourceNotFoundError, SandboxClient
from tests.compat._venvs import langsmith_python
from tests.conftest import Server

pytestmark = pytest.mark.root
HERE = Path(__file__).parent
#: Newest 0.15.x on PyPI (``pip index versions langsmith``) when this test was written.
LANGSMITH_015 = "0.15.1"
SDK = f"langsmith=={LANGSMITH_015}"


@pytest.fixture(scope="module")
def got(server: Server, client: SandboxClient, bb_template: str) -> dict[str, Any]:
    python = langsmith_python(LANGSMITH_015, websockets=True)
    name = client.create_sandbox(bb_template).name
    # 0.15 strips a trailing /api (or /api/v1) and appends /api/v2/sandboxes (spec §1.2).
    env = {
        **os.environ,
        "LANGSMITH_ENDPOINT": f"{server.url}/api",
        "LANGSMITH_API_KEY": server.key,
    }
    try:
        proc = subprocess.run(
            [str(python), str(HERE / "flow_core_015.py"), name],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        with contextlib.suppress(ResourceNotFoundError):  # the flow deletes it itself
            client.delete_sandbox(name)
    assert proc.returncode == 0, f"{SDK}: {proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["name"] = name
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


def test_get_sandbox_under_api_prefix_015(got: dict[str, Any]) -> None:
    assert got["sandbox"] == [got["name"], "ready", True], SDK


def test_run_015(got: dict[str, Any]) -> None:
    assert item(got, "run") == ["hello\n", "oops\n", 3, False], SDK


def test_prompt_close_after_exit_015(got: dict[str, Any]) -> None:
    assert item(got, "round_trip") < 1.0, f"{SDK}: median run('true') took {got['round_trip']}s"


def test_client_command_id_is_kept_015(got: dict[str, Any]) -> None:
    # run() sends a uuid7 hex id of its own; the handle's id comes from the server's `started`.
    cid = item(got, "utf8_offsets")["command_id"]
    assert len(cid) == 32 and cid[12] == "7", f"{SDK}: server replaced the client's id: {cid}"


def test_reissued_execute_attaches_instead_of_spawning_015(got: dict[str, Any]) -> None:
    g = item(got, "get_or_create")
    started = {"type": "started", "command_id": g["command_id"], "pid": g["started"]["pid"]}
    assert g["started"] == started, SDK
    tail = [{"type": "stdout", "data": "done\n", "offset": 0}, {"type": "exit", "exit_code": 0}]
    # Re-issued while running (after the first socket dropped) and after it finished: the same
    # process (same pid), its whole output once, and the command ran once.
    assert g["again"] == [started, *tail], SDK
    assert g["after"] == [started, *tail], SDK
    assert g["file"] == "line\n", f"{SDK}: command ran more than once"


def test_concurrent_execute_same_id_spawns_once_015(got: dict[str, Any]) -> None:
    p = item(got, "parallel_get_or_create")
    a, b = p["results"]
    assert a is not None and a == b, f"{SDK}: {p['results']}"
    assert [m["type"] for m in a] == ["started", "stdout", "exit"], SDK
    assert p["file"] == "line\n", f"{SDK}: command ran more than once"


def test_close_stdin_default_015(got: dict[str, Any]) -> None:
    c = item(got, "close_stdin_default")
    assert c["result"] == ["done\n", 0], SDK
    assert c["seconds"] < 5, f"{SDK}: cat waited for stdin ({c['seconds']}s)"


def test_stdin_with_close_input_false_015(got: dict[str, Any]) -> None:
    assert item(got, "stdin_open") == ["got:wörld\n", 0], SDK


def test_close_stdin_message_015(got: dict[str, Any]) -> None:
    c = item(got, "close_input_message")
    assert c["result"] == ["abc\neof\n", 0], SDK
    assert c["seconds"] < 5, SDK


def test_wait_false_utf8_offsets_015(got: dict[str, Any]) -> None:
    u = item(got, "utf8_offsets")
    assert isinstance(u["pid"], int), SDK
    assert u["result"] == ["a\nü€😀\n", "z\n", 0], SDK
    assert_contiguous(u["chunks"])
    assert next(c for c in u["chunks"] if c[1].startswith("ü"))[2] == 2, SDK
    assert u["last"] == [12, 2], SDK


def test_reconnect_with_offsets_015(got: dict[str, Any]) -> None:
    r = item(got, "reconnect_offsets")
    assert r["done"] == ["ü€😀", "XY", 0], SDK
    assert r["tail"] == ["€😀", "XY", 0], SDK
    assert next(c for c in r["tail_chunks"] if c[0] == "stdout")[2] == 2, SDK
    assert r["full"] == ["ü€😀", "XY", 0], SDK
    assert r["end"] == ["", "Y", 0], SDK
    # The re-attach is acknowledged with `started` (same id and pid) before any output.
    assert r["raw"] == [
        {"type": "started", "command_id": r["command_id"], "pid": r["pid"]},
        {"type": "stderr", "data": "XY", "offset": 0},
        {"type": "exit", "exit_code": 0},
    ], SDK


def test_reconnect_unknown_id_command_not_found_015(got: dict[str, Any]) -> None:
    e = item(got, "unknown_command")
    assert e is not None, f"{SDK}: reconnect to an unknown id did not raise"
    assert [e["type"], e["error_type"], e["operation"]] == [
        "SandboxOperationError",
        "CommandNotFound",
        "reconnect",
    ], SDK
    assert e["str"] == f"Command not found: {'0' * 32} [CommandNotFound]", SDK


def test_kill_then_reconnect_shows_137_015(got: dict[str, Any]) -> None:
    k = item(got, "kill")
    assert k["first"] == ["stdout", "ready\n"], SDK
    assert k["raised"] is not None, f"{SDK}: iteration after kill() did not raise"
    assert k["raised"]["connection_error"], f"{SDK}: {k['raised']}"
    assert k["after"] == ["ready\n", 137], SDK
    assert k["seconds"] < 5, SDK


def test_timeout_015(got: dict[str, Any]) -> None:
    t = item(got, "timeout")
    assert t is not None, f"{SDK}: run('sleep 5', timeout=1) did not raise"
    assert t["type"] == "CommandTimeoutError", SDK
    assert t["str"] == "Command timed out after 1 seconds [CommandTimeout]", SDK
    assert t["seconds"] < 4, SDK


def test_env_cwd_015(got: dict[str, Any]) -> None:
    assert item(got, "env_cwd") == "1 ü\n/tmp\n", SDK


def test_write_read_015(got: dict[str, Any]) -> None:
    f = item(got, "files")
    assert f == {
        "text": "hi ü\n",
        "binary_ok": True,
        "via_run": "hi ü\n",
        "missing": ["ResourceNotFoundError", "file"],
    }, SDK


def test_delete_015(got: dict[str, Any]) -> None:
    assert got["deleted"] is True, SDK
