"""A command streaming through a server restart (``kill -9`` or graceful) arrives byte-exact.

The sandbox's init keeps the command's pipe ends and exit status, and every byte the server read
from a pipe is in a log file in the sandbox's bundle first (see "Commands across a server
restart" in ``docs/architecture.md``): a restarted server takes the command over under the same
id, and a client reconnecting from its last offsets gets exactly the rest of the stream.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests import conftest
from tests.compat._venvs import NEWEST_015, langsmith_python
from tests.conftest import Server, start_server, stop_server
from tests.faults.test_control_socket_restart import ARGS, _restart, data

pytestmark = pytest.mark.root
__all__ = ["data"]  # the fixture, shared with the control socket's restart tests
LINES = 6_000_000  # `seq 1 LINES` is 46.9 MB
COMMAND = f"seq 1 {LINES}; echo done >&2; exit 7"
EXPECTED = "".join(f"{i}\n" for i in range(1, LINES + 1))
#: Read this much through the first server: past what its log file keeps (so blocks before it
#: were given back), less than all of it.
BEFORE = 30 * 1024 * 1024


@pytest.mark.parametrize("how", ["kill -9", "graceful"])
def test_a_command_streams_byte_exact_through_a_restart(data: Path, how: str) -> None:
    """Reconnecting by command id after a restart resumes the stream from the client's offsets
    with every byte exactly once, and the exit code and stderr of the command."""
    srv: Server = start_server(data, *ARGS)
    try:
        with srv.client() as c:
            sb = c.create_sandbox(name="survivor")
            handle = sb.run(COMMAND, wait=False, timeout=0)
            got: list[str] = []
            size = 0
            for chunk in handle:
                if chunk.stream == "stdout":
                    got.append(chunk.data)
                    size += len(chunk.data)
                if size >= BEFORE:
                    break
            command_id = handle.command_id
            stdout_offset = handle.last_stdout_offset
            stderr_offset = handle.last_stderr_offset
            assert stdout_offset == size and stderr_offset == 0
            # The command cannot have finished: it blocks on a full pipe while nobody reads.
            srv = _restart(srv, data, how)
            handle.close()
        with srv.client() as c:
            sb = c.get_sandbox("survivor")
            later = sb.reconnect(
                command_id, stdout_offset=stdout_offset, stderr_offset=stderr_offset
            )
            err: list[str] = []
            for chunk in later:
                (got if chunk.stream == "stdout" else err).append(chunk.data)
            result = later.result
        out = "".join(got)
        assert len(out) == len(EXPECTED)
        assert out == EXPECTED
        assert "".join(err) == "done\n"
        assert result.exit_code == 7
        # The log file keeps the stream's offsets but not all its blocks.
        [log] = (data / "sandboxes" / sb.id / "exec").glob("*.out")
        assert log.stat().st_size == len(EXPECTED)
        assert log.stat().st_blocks * 512 <= 17 * 1024 * 1024
    finally:
        stop_server(srv)


@pytest.mark.parametrize("how", ["kill -9", "graceful"])
def test_the_langsmith_sdk_resumes_by_itself_through_a_restart(
    data: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The langsmith 0.15 SDK, iterating one handle while the server restarts on the same port,
    reconnects by itself from its offsets and gets the whole stream byte-exact."""
    srv: Server = start_server(data, *ARGS)
    flow = None
    try:
        with srv.client() as c:
            c.create_sandbox(name="survivor")
        args = {
            "url": srv.url,
            "key": srv.key,
            "sandbox": "survivor",
            "command": COMMAND,
            "before": BEFORE,
        }
        flow = subprocess.Popen(
            [
                str(langsmith_python(NEWEST_015, websockets=True)),
                str(Path(__file__).with_name("langsmith_restart_flow.py")),
                json.dumps(args),
            ],
            env={k: v for k, v in os.environ.items() if not k.startswith("LANGSMITH_")},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert flow.stdin is not None and flow.stdout is not None
        assert "command_id" in json.loads(flow.stdout.readline())
        # The same port: the SDK reconnects to the address it has.
        port = urlsplit(srv.url).port
        monkeypatch.setattr(conftest, "free_port", lambda: port)
        srv = _restart(srv, data, how)
        flow.stdin.write("go\n")
        flow.stdin.flush()
        out, _ = flow.communicate(timeout=300)
        assert flow.returncode == 0
        got = json.loads(out.strip().splitlines()[-1])
        assert got["size"] == len(EXPECTED)
        assert got["sha256"] == hashlib.sha256(EXPECTED.encode()).hexdigest()
        assert (got["stderr"], got["exit_code"]) == ("done\n", 7)
    finally:
        if flow is not None and flow.poll() is None:
            flow.kill()
            flow.wait()
        stop_server(srv)


def test_stdin_and_an_exit_while_no_server_runs_survive_a_kill(data: Path) -> None:
    """Across kill -9: a command reading stdin still gets later input and its EOF; a command
    that exits while no server runs reports its output and real exit code."""
    srv: Server = start_server(data, *ARGS)
    try:
        with srv.client() as c:
            sb = c.create_sandbox(name="survivor")
            reader = sb.run("read x; echo got-$x; cat; exit 3", wait=False, timeout=0)
            reader.send_input("a\n")
            first = next(iter(reader))
            assert (first.stream, first.data) == ("stdout", "got-a\n")
            late = sb.run("sleep 0.5; echo late; echo err >&2; exit 5", wait=False, timeout=0)
            late_id = late.command_id
            late.close()
            srv = _restart(srv, data, "kill -9")
            reader.close()
        with srv.client() as c:
            sb = c.get_sandbox("survivor")
            again = sb.reconnect(reader.command_id, stdout_offset=len("got-a\n"))
            again.send_input("b\n")
            again.close_stdin()
            result = again.result
            assert (result.stdout, result.exit_code) == ("b\n", 3)
            done = sb.reconnect(late_id).result
            assert (done.stdout, done.stderr, done.exit_code) == ("late\n", "err\n", 5)
    finally:
        stop_server(srv)
