"""Bad input on ``/execute/ws`` with raw WebSockets: each gives a clear ``error`` or close code,
never a crash, and never disturbs another command session.

What the server does (``hutch.server._ws_exec``): a bad *first* message gets an ``error``
(``CommandError``, "Invalid first message: ...") and close 1000; a bad or unknown message *after*
the first closes 1008 with the reason, and the command goes on (a session outlives its socket);
a frame over 16 MiB closes 1009; input for a finished command is dropped; a refused upgrade is an
HTTP status (401 key, 404 sandbox). A bystander command on another sandbox keeps streaming
throughout, and every test checks the server log for tracebacks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from hutch import CommandHandle, Sandbox, SandboxClient
from hutch.server import _ws_exec
from tests.conftest import TIME_SCALE, Server, wait_until

pytestmark = pytest.mark.root

RECV_TIMEOUT = 10 * TIME_SCALE
SEQ = "".join(f"{i}\n" for i in range(1, 2001))


# -- raw WebSocket helpers -----------------------------------------------------------------------


def _url(server: Server, sandbox_id: str) -> str:
    return f"ws://{server.url.removeprefix('http://')}/dp/{sandbox_id}/execute/ws"


@contextmanager
def _ws(server: Server, sandbox_id: str, key: str | None = None) -> Iterator[ClientConnection]:
    headers = {"X-Api-Key": server.key if key is None else key}
    with connect(_url(server, sandbox_id), additional_headers=headers, max_size=None) as ws:
        yield ws


@dataclass
class Transcript:
    """What the server sent until it closed: parsed messages and the close frame it sent."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    code: int | None = None
    reason: str = ""

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    def output(self, stream: str) -> str:
        return "".join(m["data"] for m in self.messages if m["type"] == stream)


def _read_until_close(ws: ClientConnection) -> Transcript:
    out = Transcript()
    try:
        while True:
            out.messages.append(json.loads(ws.recv(timeout=RECV_TIMEOUT)))
    except ConnectionClosed as exc:
        if exc.rcvd is not None:
            out.code, out.reason = exc.rcvd.code, exc.rcvd.reason
    return out


def _send_all(ws: ClientConnection, *frames: str | bytes) -> None:
    """Send frames; the server may close midway (that is what some tests are about)."""
    for frame in frames:
        try:
            ws.send(frame)
        except ConnectionClosed:
            return


def _exchange(server: Server, sandbox_id: str, *frames: str | bytes) -> Transcript:
    with _ws(server, sandbox_id) as ws:
        _send_all(ws, *frames)
        return _read_until_close(ws)


def _msg(**fields: Any) -> str:
    return json.dumps(fields)


def _start(ws: ClientConnection, command: str, **extra: Any) -> str:
    """Send ``execute``; returns the command id from ``started``."""
    ws.send(_msg(type="execute", command=command, ttl_seconds=600, **extra))
    started = json.loads(ws.recv(timeout=RECV_TIMEOUT))
    assert started["type"] == "started", started
    return str(started["command_id"])


def _reconnect(server: Server, sandbox_id: str, command_id: str, *frames: str) -> Transcript:
    reconnect = _msg(type="reconnect", command_id=command_id, stdout_offset=0, stderr_offset=0)
    return _exchange(server, sandbox_id, reconnect, *frames)


# -- the bystander, the target, and the health check after every test ---------------------------


class Bystander:
    """A streamed command on its own sandbox, started before any bad input: for each line of
    input it prints ``seq 1 2000`` and an echo of the line, until the line ``stop``."""

    COMMAND = (
        'echo begin; while read -r line; do seq 1 2000; echo "echo:$line"; '
        '[ "$line" = stop ] && exit 0; done'
    )

    def __init__(self, sb: Sandbox) -> None:
        self.handle: CommandHandle = sb.run(self.COMMAND, timeout=0, wait=False)
        self.expected = "begin\n"
        self.seen = ""
        self.done = False
        self._take("begin\n")

    def _take(self, until: str) -> None:
        for chunk in self.handle:
            assert chunk.stream == "stdout", chunk
            self.seen += chunk.data
            if self.seen.endswith(until):
                break
        assert self.seen == self.expected

    def ping(self, label: str) -> None:
        """It still answers, with exactly the expected output."""
        self.handle.send_input(f"{label}\n")
        self.expected += SEQ + f"echo:{label}\n"
        self._take(f"echo:{label}\n")


@pytest.fixture(scope="module")
def bystander(client: SandboxClient, bb_template: str) -> Iterator[Bystander]:
    with client.sandbox(bb_template) as sb:
        by = Bystander(sb)
        try:
            yield by
        finally:
            by.handle.close()


@pytest.fixture(scope="module")
def target(client: SandboxClient, bb_template: str) -> Iterator[Sandbox]:
    """The sandbox that receives the bad input."""
    with client.sandbox(bb_template) as sb:
        yield sb


@pytest.fixture(autouse=True)
def still_healthy(
    request: pytest.FixtureRequest, server: Server, bystander: Bystander, target: Sandbox
) -> Iterator[None]:
    """After each test: no traceback in the server log, the server serves, the target sandbox
    runs commands, and the bystander session streams on undisturbed."""
    log_start = server.log.stat().st_size
    yield
    assert server.alive()
    assert target.run("echo ok").stdout == "ok\n"
    if not bystander.done:
        bystander.ping(request.node.name)
    with server.log.open("rb") as f:
        f.seek(log_start)
        appended = f.read().decode(errors="replace")
    for sign in ("Traceback", "Exception in ASGI", "ERROR"):
        assert sign not in appended, appended


def _sid(sb: Sandbox) -> str:
    assert sb.id is not None
    return sb.id


# -- bad first messages --------------------------------------------------------------------------

BAD_FIRST = [
    pytest.param("{not json", "not valid JSON", id="malformed-json"),
    pytest.param("", "not valid JSON", id="empty"),
    pytest.param(b"\xff\xfe{", "not valid JSON", id="binary-not-utf8"),
    pytest.param("[" * 100_000 + "]" * 100_000, "not valid JSON", id="deeply-nested"),
    pytest.param("[1, 2]", "must be a JSON object, got list", id="array"),
    pytest.param('"execute"', "must be a JSON object, got str", id="string"),
    pytest.param("null", "must be a JSON object, got NoneType", id="null"),
    pytest.param("{}", "no 'type' field", id="no-type"),
    pytest.param('{"type": 7}', "'type' must be a string", id="type-not-string"),
    pytest.param(
        '{"type": "bogus"}',
        "unknown message type 'bogus' is not allowed as the first message",
        id="unknown-type",
    ),
    pytest.param(
        '{"type": "input", "data": "x"}',
        "message type 'input' is not allowed as the first message",
        id="input-first",
    ),
    pytest.param('{"type": "execute"}', "missing required field 'command'", id="no-command"),
    pytest.param(
        '{"type": "execute", "command": "echo", "timeout_seconds": -5}',
        "timeout_seconds must be >= 0",
        id="negative-timeout",
    ),
    pytest.param(
        '{"type": "execute", "command": "echo", "timeout_seconds": "5"}',
        "'timeout_seconds' must be an integer, got str",
        id="timeout-string",
    ),
    pytest.param(
        '{"type": "execute", "command": "echo", "idle_timeout_seconds": -2}',
        "idle_timeout_seconds (-1: never) must be >= -1",
        id="idle-below-minus-1",
    ),
    pytest.param(
        '{"type": "execute", "command": "echo \\u0000"}',
        "command must not contain NUL characters",
        id="nul-in-command",
    ),
    pytest.param(
        '{"type": "execute", "command": "echo", "env": {"A=B": "x"}}',
        "env name 'A=B' must be non-empty, without '=' or NUL",
        id="bad-env-name",
    ),
    pytest.param(
        '{"type": "execute", "command": "echo", "pty": true, "rows": 70000}',
        "rows must be <= 65535",
        id="pty-rows-too-big",
    ),
    pytest.param(
        json.dumps({"type": "execute", "command": "echo", "command_id": "x" * 129}),
        "command_id must be 1-128 characters",
        id="command-id-too-long",
    ),
    pytest.param(
        '{"type": "reconnect", "command_id": "../../etc"}',
        "command_id must be 1-128 characters",
        id="bad-command-id",
    ),
    pytest.param(
        '{"type": "reconnect", "command_id": "abc", "stdout_offset": -1}',
        "stdout_offset must be >= 0",
        id="negative-offset",
    ),
    pytest.param(
        json.dumps({"type": "reconnect", "command_id": "abc", "stderr_offset": 2**63}),
        "must be <= 9223372036854775807",
        id="offset-over-int64",
    ),
]


@pytest.mark.parametrize(("frame", "says"), BAD_FIRST)
def test_bad_first_message_gets_error_and_close_1000(
    server: Server, target: Sandbox, frame: str | bytes, says: str
) -> None:
    """An invalid first message gets one CommandError `error` naming it, then close 1000."""
    got = _exchange(server, _sid(target), frame)
    assert got.types() == ["error"], got
    assert got.messages[0]["error_type"] == "CommandError"
    assert got.messages[0]["error"].startswith("Invalid first message: "), got
    assert says in got.messages[0]["error"], got
    assert got.code == 1000


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        pytest.param({"cwd": "/nonexistent"}, "Working directory '/nonexistent' does not exist"),
        pytest.param({"shell": "/no/shell"}, "Shell '/no/shell' not found"),
    ],
    ids=["missing-cwd", "missing-shell"],
)
def test_unrunnable_execute_gets_command_error(
    server: Server, target: Sandbox, fields: dict[str, str], says: str
) -> None:
    """An execute that cannot run (no such cwd/shell) gets a CommandError saying why."""
    got = _exchange(server, _sid(target), _msg(type="execute", command="echo hi", **fields))
    assert got.types() == ["error"] and got.code == 1000, got
    assert got.messages[0]["error_type"] == "CommandError"
    assert says in got.messages[0]["error"], got


def test_huge_command_fails_clearly(server: Server, target: Sandbox) -> None:
    """A 3 MB command line is refused before it starts: ``error`` PayloadTooLarge naming the
    kernel's limit, then close 1000."""
    got = _exchange(server, _sid(target), _msg(type="execute", command="echo " + "a" * 3_000_000))
    assert got.types() == ["error"] and got.code == 1000, got
    assert got.messages[0]["error_type"] == "PayloadTooLarge"
    assert "at most 131071 bytes" in got.messages[0]["error"]


def test_binary_frame_with_json_is_accepted(server: Server, target: Sandbox) -> None:
    """Spec §4.1: a binary frame holding the JSON works like a text frame."""
    got = _exchange(server, _sid(target), _msg(type="execute", command="echo hi").encode())
    assert got.types() == ["started", "stdout", "exit"] and got.code == 1000, got
    assert (got.output("stdout"), got.messages[-1]["exit_code"]) == ("hi\n", 0)


def test_reconnect_to_unknown_command(server: Server, target: Sandbox) -> None:
    """A reconnect to an id never seen gets `error` CommandNotFound, then close 1000."""
    unknown = "f" * 32
    got = _reconnect(server, _sid(target), unknown)
    assert got.messages == [
        {"type": "error", "error_type": "CommandNotFound", "error": f"Command not found: {unknown}"}
    ]
    assert got.code == 1000


# -- bad messages after the first ----------------------------------------------------------------


def test_policy_close_is_documented() -> None:
    """The module docstring of _ws_exec documents the 1008 close for a protocol violation."""
    assert _ws_exec.__doc__ is not None
    assert "1008 for a protocol violation after the first message" in " ".join(
        _ws_exec.__doc__.split()
    )


BAD_LATER = [
    pytest.param(
        '{"type": "bogus"}',
        "unknown message type 'bogus' is not allowed after the first message",
        id="unknown-type",
    ),
    pytest.param("{nope", "message is not valid JSON", id="malformed-json"),
    pytest.param("[]", "must be a JSON object", id="array"),
    pytest.param('{"type": "input", "data": 5}', "'data' must be a string", id="input-not-string"),
    pytest.param(
        '{"type": "reconnect", "command_id": "abc"}',
        "message type 'reconnect' is not allowed after the first message",
        id="reconnect-later",
    ),
    pytest.param('{"type": "resize", "rows": 0, "cols": 80}', "rows must be >= 1", id="resize"),
]


@pytest.mark.parametrize(("frame", "says"), BAD_LATER)
def test_bad_message_after_start_closes_1008_command_survives(
    server: Server, target: Sandbox, frame: str, says: str
) -> None:
    """A bad message after `execute` closes 1008 with the reason; the command runs on."""
    with _ws(server, _sid(target)) as ws:
        command_id = _start(ws, "read x; echo got:$x")
        ws.send(frame)
        got = _read_until_close(ws)
    assert got.messages == [] and got.code == 1008, got
    assert says in got.reason, got.reason
    after = _reconnect(server, _sid(target), command_id, _msg(type="input", data="after\n"))
    assert after.types() == ["started", "stdout", "exit"], after
    assert (after.output("stdout"), after.messages[-1]["exit_code"]) == ("got:after\n", 0)


def test_second_execute_on_one_socket(server: Server, target: Sandbox) -> None:
    """A second `execute` on one socket closes it 1008 and never runs; the first is unaffected."""
    with _ws(server, _sid(target)) as ws:
        command_id = _start(ws, "read x; echo first:$x")
        ws.send(_msg(type="execute", command="touch /tmp/second-ran"))
        got = _read_until_close(ws)
    assert got.messages == [] and got.code == 1008, got
    assert "message type 'execute' is not allowed after the first message" in got.reason
    after = _reconnect(server, _sid(target), command_id, _msg(type="input", data="still\n"))
    assert (after.output("stdout"), after.messages[-1]) == (
        "first:still\n",
        {"type": "exit", "exit_code": 0},
    )
    assert target.run("[ -e /tmp/second-ran ] || echo absent").stdout == "absent\n"


# -- input that has nowhere to go, or is huge ----------------------------------------------------


def test_input_to_an_exited_command_is_dropped(server: Server, target: Sandbox) -> None:
    """Input for an exited command is dropped; the client still gets exit and close 1000."""
    execute = _msg(type="execute", command="exit 5", ttl_seconds=600)
    flood = [_msg(type="input", data="late\n")] * 50
    got = _exchange(server, _sid(target), execute, *flood)
    assert got.types() == ["started", "exit"] and got.code == 1000, got
    assert got.messages[-1]["exit_code"] == 5
    command_id = got.messages[0]["command_id"]
    again = _reconnect(server, _sid(target), command_id, *flood)
    assert again.types() == ["started", "exit"] and again.code == 1000, again
    assert again.messages[-1]["exit_code"] == 5


def test_10mb_input_frame_is_delivered(server: Server, target: Sandbox) -> None:
    """A 10 MB multi-byte `input` frame reaches stdin intact (sha256sum in the sandbox)."""
    line = "ünïcödé ✓ 日本 🎉 " + "x" * 1000 + "\n"
    data = line * (10_000_000 // len(line.encode()))
    assert 9_900_000 < len(data.encode()) <= 10_000_000
    frame = json.dumps({"type": "input", "data": data}, ensure_ascii=False)
    with _ws(server, _sid(target)) as ws:
        _start(ws, "sha256sum")
        ws.send(frame)
        ws.send(_msg(type="close_stdin"))
        got = _read_until_close(ws)
    digest = hashlib.sha256(data.encode()).hexdigest()
    assert got.output("stdout") == f"{digest}  -\n", got
    assert got.messages[-1] == {"type": "exit", "exit_code": 0} and got.code == 1000


def test_20mb_frame_closes_1009(server: Server, target: Sandbox) -> None:
    """A 20 MB frame (over 16 MiB) is refused: the server closes 1009 (a client still busy
    sending may only see the connection drop), and the detached command is killed (137)."""
    with _ws(server, _sid(target)) as ws:
        command_id = _start(ws, "wc -c; echo marker-20mb", kill_on_disconnect=True)
        _send_all(ws, _msg(type="input", data="y" * 20_000_000))
        got = _read_until_close(ws)
    assert got.messages == [] and got.code in (1009, None), got
    assert wait_until(lambda: "marker-20mb" not in target.run("ps -o args").stdout, 5, interval=0.1)
    after = _reconnect(server, _sid(target), command_id)
    assert after.messages[-1] == {"type": "exit", "exit_code": 137}, after


# -- offsets beyond the end ----------------------------------------------------------------------


def test_reconnect_offsets_beyond_the_end(server: Server, target: Sandbox) -> None:
    """Reconnect offsets beyond the end bring `exit` and never a byte before the offset."""
    got = _exchange(
        server,
        _sid(target),
        _msg(type="execute", command="echo hello; echo oops >&2", ttl_seconds=600),
    )
    command_id = got.messages[0]["command_id"]
    assert (got.output("stdout"), got.output("stderr")) == ("hello\n", "oops\n")
    for offsets in ((10**6, 10**6), (6, 5), (2**63 - 1, 0)):
        request = _msg(
            type="reconnect",
            command_id=command_id,
            stdout_offset=offsets[0],
            stderr_offset=offsets[1],
        )
        again = _exchange(server, _sid(target), request)
        expected = ["started", "exit"] if offsets[1] >= 5 else ["started", "stderr", "exit"]
        assert again.types() == expected and again.code == 1000, (offsets, again)
        assert again.output("stdout") == ""
        assert again.output("stderr") == "oops\n"[offsets[1] :]

    # Running, nothing printed yet: ask from byte 4 of a stdout that will be "got:ab\nmore\n".
    with _ws(server, _sid(target)) as ws:
        command_id = _start(ws, "read x; echo got:$x; echo more")
    with _ws(server, _sid(target)) as ws:
        ws.send(_msg(type="reconnect", command_id=command_id, stdout_offset=4, stderr_offset=0))
        ws.send(_msg(type="input", data="ab\n"))
        live = _read_until_close(ws)
    chunks = [m for m in live.messages if m["type"] == "stdout"]
    assert all(m["offset"] >= 4 for m in chunks), live
    assert live.output("stdout") == "ab\nmore\n"
    assert live.messages[-1] == {"type": "exit", "exit_code": 0}


# -- refused upgrades ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "wrong-key"], ids=["missing-key", "wrong-key"])
def test_bad_api_key_refuses_the_upgrade_401(server: Server, target: Sandbox, key: str) -> None:
    """A missing or wrong X-Api-Key refuses the upgrade itself with HTTP 401 and an error body."""
    with pytest.raises(InvalidStatus) as info, _ws(server, _sid(target), key=key):
        pass
    assert info.value.response.status_code == 401
    assert json.loads(info.value.response.body or b"")["detail"]["message"]


def test_unknown_sandbox_refuses_the_upgrade_404(server: Server) -> None:
    """An unknown sandbox id refuses the upgrade with HTTP 404 naming the sandbox."""
    with pytest.raises(InvalidStatus) as info, _ws(server, "0" * 32):
        pass
    assert info.value.response.status_code == 404
    assert "0" * 32 in json.loads(info.value.response.body or b"")["detail"]["message"]


# -- the bystander finishes ----------------------------------------------------------------------


def test_bystander_completes_intact(bystander: Bystander) -> None:
    """The session started before all the bad input ends with all its output, exactly once."""
    bystander.handle.send_input("stop\n")
    bystander.expected += SEQ + "echo:stop\n"
    result = bystander.handle.result
    bystander.done = True
    assert (result.stdout, result.exit_code) == (bystander.expected, 0)
