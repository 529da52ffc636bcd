"""Streaming execution over /execute/ws against a real, scripted WebSocket server (spec §4)."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from hutch import (
    CommandHandle,
    CommandTimeoutError,
    OutputChunk,
    SandboxAPIError,
    SandboxConnectionError,
    SandboxOperationError,
)

from .conftest import Harness, sandbox_json

pytestmark = pytest.mark.timeout(30)

CMD_ID = "94e60116df6141059d3ae69331ce1e28"


class Peer:
    """The server's side of one accepted connection, driven by a test's script."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.path = ws.request.path if ws.request else ""
        self.headers = ws.request.headers if ws.request else None
        self.first_frame = ""
        self.received: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.done = threading.Event()

    def recv(self) -> dict[str, Any]:
        raw = self.ws.recv()
        assert isinstance(raw, str)
        self.first_frame = self.first_frame or raw
        msg: dict[str, Any] = json.loads(raw)
        self.received.append(msg)
        return msg

    def send(self, **msg: Any) -> None:
        self.ws.send(json.dumps(msg))

    def started(self) -> None:
        self.send(type="started", command_id=CMD_ID, pid=16065)

    def out(self, data: str, offset: int, stream: str = "stdout") -> None:
        self.send(type=stream, data=data, offset=offset)

    def exit(self, code: int = 0) -> None:
        self.send(type="exit", exit_code=code)
        self.ws.close(1000)

    def close(self, code: int) -> None:
        self.ws.close(code)

    def wait_closed(self) -> None:
        """Read until the client closes; remember its close code."""
        try:
            while True:
                self.recv()
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None


Script = Callable[[Peer], None]


class ScriptedServer:
    """A WebSocket server on 127.0.0.1:0; connection *n* runs ``scripts[n]`` after the first
    client message. ``statuses`` answers upgrades in turn (``None`` accepts)."""

    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.statuses: list[int | None] = []
        self.status_body = ""
        self.upgrades: list[Request] = []
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self._server: Server = serve(
            self._handle, "127.0.0.1", 0, process_request=self._process_request
        )
        self.port = self._server.socket.getsockname()[1]
        self.dataplane = f"http://127.0.0.1:{self.port}/dp/sb-1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.upgrades.append(request)
        status = self.statuses.pop(0) if self.statuses else None
        if status is None:
            return None
        return conn.respond(status, self.status_body or f"refused with {status}\n")

    def _handle(self, ws: ServerConnection) -> None:
        peer = Peer(ws)
        self.peers.append(peer)
        try:
            peer.recv()
            script = self.scripts.pop(0)
            script(peer)
        except ConnectionClosed:
            pass
        except BaseException as exc:  # surfaced by the fixture's teardown
            self.errors.append(exc)
            raise
        finally:
            peer.done.set()

    def wait(self, index: int) -> Peer:
        """Peer ``index`` once its script has finished."""
        assert self.peers[index].done.wait(10), f"connection {index} did not finish"
        return self.peers[index]

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(10)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer()
    yield srv
    srv.stop()
    assert srv.errors == []
    assert srv.scripts == [], "the client opened fewer connections than scripted"


def execute_answer(request: httpx.Request) -> httpx.Response:
    """The HTTP side: sandbox lookups and the /execute fallback."""
    if request.url.path.endswith("/execute"):
        return httpx.Response(200, json={"stdout": "over http\n", "stderr": "", "exit_code": 0})
    return httpx.Response(404, json={"detail": {"error": "NotFound", "message": "no"}})


async def sandbox_at(h: Harness, dataplane: str) -> Any:
    """A ready sandbox whose data plane is ``dataplane`` (fetched once, then forgotten)."""
    handler = h.handler
    h.handler = lambda r: httpx.Response(200, json=sandbox_json(dataplane_url=dataplane))
    sb = await h("get_sandbox", "sb-1")
    h.handler = handler
    h.requests.clear()
    return sb


async def collect(handle: Any, limit: int | None = None) -> list[OutputChunk]:
    """Iterate a sync or async handle (at most ``limit`` chunks)."""
    chunks: list[OutputChunk] = []
    if isinstance(handle, CommandHandle):
        for chunk in handle:
            chunks.append(chunk)
            if len(chunks) == limit:
                break
    else:
        async for chunk in handle:
            chunks.append(chunk)
            if len(chunks) == limit:
                break
    return chunks


async def result_of(handle: Any) -> Any:
    """``handle.result`` (a property of the sync handle, awaited on the async one)."""
    result = handle.result
    return await result if inspect.isawaitable(result) else result


@pytest.fixture
def h(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness(execute_answer, api_key="test-key", headers={"X-Team": "t"})


# -- The examples of spec §4.8 ---------------------------------------------------------------


async def test_example_a_run_over_websocket(server: ScriptedServer, h: Harness) -> None:
    """run() sends langsmith's execute frame with the client's headers and returns the result."""

    def script(peer: Peer) -> None:
        peer.send(type="progress", note="ignored before started")
        peer.started()
        peer.out("hello\n", 0)
        peer.send(type="heartbeat")
        peer.out("oops\n", 0, "stderr")
        peer.exit(3)

    server.scripts = [script]
    sb = await sandbox_at(h, server.dataplane)
    result = await h.call(sb, "run", "echo hello; echo oops >&2; exit 3", headers={"X-Req": "1"})
    assert (result.stdout, result.stderr, result.exit_code, result.success) == (
        "hello\n",
        "oops\n",
        3,
        False,
    )
    peer = server.wait(0)
    assert peer.path == "/dp/sb-1/execute/ws"
    assert peer.first_frame == (
        '{"type": "execute", "command": "echo hello; echo oops >&2; exit 3", '
        '"timeout_seconds": 60, "shell": "/bin/bash", "idle_timeout_seconds": 300, '
        '"kill_on_disconnect": false, "ttl_seconds": 600, "close_stdin": true}'
    )  # §4.8 A's frame, plus close_stdin: with wait=True nobody can send input
    assert peer.headers is not None
    assert (peer.headers["X-Api-Key"], peer.headers["X-Team"], peer.headers["X-Req"]) == (
        "test-key",
        "t",
        "1",
    )
    assert h.requests == []  # no HTTP fallback


async def test_example_b_resume_after_abnormal_close(server: ScriptedServer, h: Harness) -> None:
    """wait=False yields chunks with UTF-8 byte offsets; a 1011 close resumes at offset 12."""

    def first(peer: Peer) -> None:
        peer.started()
        peer.out("a\n", 0)
        peer.out("ü€😀\n", 2)
        peer.close(1011)

    def second(peer: Peer) -> None:
        peer.started()
        peer.out("b\n", 0, "stderr")
        peer.exit(0)

    server.scripts = [first, second]
    sb = await sandbox_at(h, server.dataplane)
    handle = await h.call(sb, "run", "job", wait=False)
    assert (handle.command_id, handle.pid) == (CMD_ID, 16065)
    assert await collect(handle) == [
        OutputChunk("stdout", "a\n", 0),
        OutputChunk("stdout", "ü€😀\n", 2),
        OutputChunk("stderr", "b\n", 0),
    ]
    result = await result_of(handle)
    assert (result.stdout, result.stderr, result.exit_code) == ("a\nü€😀\n", "b\n", 0)
    assert (handle.last_stdout_offset, handle.last_stderr_offset) == (12, 2)
    assert server.wait(1).received[0] == {
        "type": "reconnect",
        "command_id": CMD_ID,
        "stdout_offset": 12,
        "stderr_offset": 0,
    }
    assert h.sleeps == [0.5]


async def test_stdin_and_close_stdin(server: ScriptedServer, h: Harness) -> None:
    """Example C: send_input reaches the command; close_stdin and run(stdin=...) too."""

    def interactive(peer: Peer) -> None:
        peer.started()
        peer.out("Name: ", 0)
        assert peer.recv() == {"type": "input", "data": "World\n"}
        assert peer.recv() == {"type": "close_stdin"}
        peer.out("Hello World\n", 6)
        peer.exit(0)

    def piped(peer: Peer) -> None:
        peer.started()
        assert peer.recv() == {"type": "input", "data": "hi\n"}
        assert peer.recv() == {"type": "close_stdin"}
        peer.out("hi\n", 0)
        peer.exit(0)

    def closed_at_spawn(peer: Peer) -> None:
        assert peer.received[0]["close_stdin"] is True
        peer.started()
        peer.exit(0)

    server.scripts = [interactive, piped, closed_at_spawn]
    sb = await sandbox_at(h, server.dataplane)
    handle = await h.call(sb, "run", "python ask.py", wait=False)
    [prompt] = await collect(handle, limit=1)
    assert "Name:" in prompt.data
    await h.call(handle, "send_input", "World\n")
    await h.call(handle, "close_stdin")
    assert (await result_of(handle)).stdout == "Name: Hello World\n"
    with pytest.raises(SandboxOperationError, match=r"Cannot send input.*exited"):
        await h.call(handle, "send_input", "late\n")

    assert (await h.call(sb, "run", "cat", stdin="hi\n")).stdout == "hi\n"
    assert (await h.call(sb, "run", "cat", stdin="")).exit_code == 0


async def test_kill_closes_and_does_not_reconnect(server: ScriptedServer, h: Harness) -> None:
    """kill() sends kill and closes; iterating then raises SandboxConnectionError, no resume."""

    def script(peer: Peer) -> None:
        peer.started()
        peer.out("Ready\n", 0)
        assert peer.recv() == {"type": "kill"}
        peer.wait_closed()

    server.scripts = [script]
    sb = await sandbox_at(h, server.dataplane)
    handle = await h.call(sb, "run", "server", timeout=0, wait=False)
    assert (await collect(handle, limit=1))[0].data == "Ready\n"
    await h.call(handle, "kill")
    peer = server.wait(0)  # the connection ended (a close frame may not precede the TCP drop)
    assert peer.received[0]["timeout_seconds"] == 0
    with pytest.raises(SandboxConnectionError, match="killed"):
        await collect(handle)
    with pytest.raises(SandboxConnectionError, match="killed"):
        await result_of(handle)
    await h.call(handle, "kill")  # no effect any more: no new connection
    assert len(server.upgrades) == 1
    assert h.sleeps == []


async def test_kill_from_another_thread_or_task(server: ScriptedServer, h: Harness) -> None:
    """kill() from elsewhere interrupts an iteration blocked waiting for output."""

    def script(peer: Peer) -> None:
        peer.started()
        peer.out("Ready\n", 0)
        assert peer.recv() == {"type": "kill"}
        peer.wait_closed()

    server.scripts = [script]
    sb = await sandbox_at(h, server.dataplane)
    handle = await h.call(sb, "run", "server", wait=False)
    if isinstance(handle, CommandHandle):
        ready = threading.Event()

        def kill_when_ready() -> None:
            assert ready.wait(10)
            handle.kill()

        killer = threading.Thread(target=kill_when_ready)
        killer.start()
        with pytest.raises(SandboxConnectionError, match="killed"):
            for _ in handle:
                ready.set()
        killer.join(10)
    else:
        ready_async = asyncio.Event()

        async def kill_when_ready_async() -> None:
            await ready_async.wait()
            await handle.kill()

        task = asyncio.create_task(kill_when_ready_async())
        with pytest.raises(SandboxConnectionError, match="killed"):
            async for _ in handle:
                ready_async.set()
        await task
    assert server.wait(0).received[-1] == {"type": "kill"}
    assert len(server.upgrades) == 1


async def test_command_timeout(server: ScriptedServer, h: Harness) -> None:
    """Example D: an error of type CommandTimeout raises CommandTimeoutError; no fallback."""

    def script(peer: Peer) -> None:
        peer.started()
        peer.send(
            type="error", error_type="CommandTimeout", error="Command timed out after 1 seconds"
        )
        peer.close(1000)

    server.scripts = [script]
    sb = await sandbox_at(h, server.dataplane)
    with pytest.raises(CommandTimeoutError) as info:
        await h.call(sb, "run", "sleep 5", timeout=1)
    assert str(info.value) == "Command timed out after 1 seconds [CommandTimeout]"
    assert (info.value.timeout, info.value.operation) == (1, "command")
    assert h.requests == []


# -- Disconnects and auto-reconnect (spec §4.7) ----------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1012])
async def test_any_close_before_exit_resumes_and_callbacks_keep_firing(
    server: ScriptedServer, h: Harness, code: int
) -> None:
    """A close before exit, clean or not, resumes; callbacks see the chunks after it too."""

    def first(peer: Peer) -> None:
        peer.started()
        peer.out("1\n", 0)
        peer.close(code)

    def second(peer: Peer) -> None:
        peer.out("2\n", 2)
        peer.out("e\n", 0, "stderr")
        peer.exit(0)

    server.scripts = [first, second]
    sb = await sandbox_at(h, server.dataplane)
    out: list[str] = []
    err: list[str] = []
    result = await h.call(sb, "run", "job", on_stdout=out.append, on_stderr=err.append)
    assert (out, err, result.stdout) == (["1\n", "2\n"], ["e\n"], "1\n2\n")
    assert server.wait(1).received[0]["stdout_offset"] == 2


async def test_a_chunk_resets_the_reconnect_count(server: ScriptedServer, h: Harness) -> None:
    """Each loss after new output backs off 0.5 s again; resent bytes are not duplicated."""

    def first(peer: Peer) -> None:
        peer.started()
        peer.out("a", 0)
        peer.close(1011)

    def second(peer: Peer) -> None:
        peer.out("ab", 0)  # a misbehaving server resends "a"
        peer.close(1011)

    def third(peer: Peer) -> None:
        assert peer.received[0]["stdout_offset"] == 2
        peer.exit(0)

    server.scripts = [first, second, third]
    sb = await sandbox_at(h, server.dataplane)
    handle = await h.call(sb, "run", "job", wait=False)
    assert await collect(handle) == [OutputChunk("stdout", "a", 0), OutputChunk("stdout", "b", 1)]
    assert (await result_of(handle)).stdout == "ab"
    assert h.sleeps == [0.5, 0.5]


async def test_gives_up_after_five_attempts_without_running_twice(
    server: ScriptedServer, h: Harness
) -> None:
    """Lost after started and refused 5 times: SandboxConnectionError, never HTTP /execute."""

    def first(peer: Peer) -> None:
        peer.started()
        peer.close(1011)

    server.scripts = [first]
    server.statuses = [None, 503, 503, 503, 503, 503]
    sb = await sandbox_at(h, server.dataplane)
    with pytest.raises(SandboxConnectionError, match="Lost connection 6 times in succession"):
        await h.call(sb, "run", "make install")
    assert h.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert len(server.upgrades) == 6
    assert h.requests == []


async def test_close_detaches_and_iterating_reattaches(server: ScriptedServer, h: Harness) -> None:
    """close() leaves the command running; iterating re-attaches at once; reconnect() too."""

    def first(peer: Peer) -> None:
        peer.started()
        peer.out("x" * 5, 0)
        peer.wait_closed()

    def resumed(peer: Peer) -> None:
        peer.out("y", 5)
        peer.exit(0)

    def manual(peer: Peer) -> None:
        assert peer.received[0] == {
            "type": "reconnect",
            "command_id": CMD_ID,
            "stdout_offset": 6,
            "stderr_offset": 0,
        }
        peer.exit(0)

    server.scripts = [first, resumed, manual]
    sb = await sandbox_at(h, server.dataplane)
    handle = await h.call(sb, "run", "job", wait=False)
    await collect(handle, limit=1)
    await h.call(handle, "aclose" if h.kind == "async" else "close")
    assert server.wait(0).close_code == 1000
    assert (await result_of(handle)).stdout == "xxxxxy"
    again = await h.call(handle, "reconnect")
    assert (await result_of(again)).stdout == ""
    assert h.sleeps == []


# -- Errors --------------------------------------------------------------------------------------


def _error_first(peer: Peer) -> None:
    peer.send(type="error", error_type="CommandError", error="spawn failed: no /bin/bash")
    peer.close(1000)


def _output_first(peer: Peer) -> None:
    peer.out("x", 0)


def _clean_close_first(peer: Peer) -> None:
    peer.close(1000)


def _abnormal_close_first(peer: Peer) -> None:
    peer.close(1011)


@pytest.mark.parametrize(
    ("script", "error", "message"),
    [
        (_error_first, SandboxOperationError, r"spawn failed: no /bin/bash \[CommandError\]"),
        (_output_first, SandboxOperationError, "Expected 'started' message, got 'stdout'"),
        (_clean_close_first, SandboxOperationError, "ended before 'started' message"),
        (_abnormal_close_first, SandboxConnectionError, "may or may not be running"),
    ],
)
async def test_failures_before_started_never_fall_back(
    server: ScriptedServer,
    h: Harness,
    script: Script,
    error: type[Exception],
    message: str,
) -> None:
    """Once the command was sent, run() raises instead of re-running it over HTTP."""
    server.scripts = [script]
    sb = await sandbox_at(h, server.dataplane)
    with pytest.raises(error, match=message) as info:
        await h.call(sb, "run", "job")
    if isinstance(info.value, SandboxOperationError):
        assert info.value.operation == "command"
    assert h.requests == []


async def test_reconnect_by_id(server: ScriptedServer, h: Harness) -> None:
    """sb.reconnect sends the offsets; CommandNotFound is a reconnect error; replay works."""

    def missing(peer: Peer) -> None:
        peer.send(type="error", error_type="CommandNotFound", error="no such command")
        peer.close(1000)

    def replay(peer: Peer) -> None:
        peer.out("tail", 5)
        peer.exit(7)

    server.scripts = [missing, replay]
    sb = await sandbox_at(h, server.dataplane)
    handle = await h.call(sb, "reconnect", "abc")
    with pytest.raises(SandboxOperationError) as info:
        await result_of(handle)
    assert str(info.value) == "Command not found: abc [CommandNotFound]"
    assert (info.value.operation, info.value.error_type) == ("reconnect", "CommandNotFound")
    assert server.wait(0).received[0] == {
        "type": "reconnect",
        "command_id": "abc",
        "stdout_offset": 0,
        "stderr_offset": 0,
    }
    handle = await h.call(sb, "reconnect", CMD_ID, stdout_offset=5)
    result = await result_of(handle)
    assert (result.stdout, result.exit_code, handle.last_stdout_offset) == ("tail", 7, 9)
    with pytest.raises(ValueError, match="stdout_offset"):
        await h.call(sb, "reconnect", CMD_ID, stdout_offset=-1)


async def test_invalid_server_message(server: ScriptedServer, h: Harness) -> None:
    """A frame that breaks the protocol raises SandboxAPIError, not a JSON error."""

    def script(peer: Peer) -> None:
        peer.started()
        peer.ws.send("{not json")
        peer.wait_closed()

    server.scripts = [script]
    sb = await sandbox_at(h, server.dataplane)
    handle = await h.call(sb, "run", "job", wait=False)
    with pytest.raises(SandboxAPIError, match="invalid /execute/ws message"):
        await collect(handle)


# -- Upgrade failures and the HTTP fallback (spec §4.1, §4.6, §5) ----------------------------


async def test_upgrade_failures(server: ScriptedServer, h: Harness) -> None:
    """404, another status, and a network error each give their SandboxConnectionError."""
    sb = await sandbox_at(h, server.dataplane)
    server.statuses = [404]
    with pytest.raises(SandboxConnectionError, match="does not support WebSocket command"):
        await h.call(sb, "run", "ls", wait=False)
    server.statuses = [403]
    server.status_body = json.dumps({"detail": {"error": "Forbidden", "message": "key rejected"}})
    with pytest.raises(SandboxConnectionError, match=r"rejected by server \(HTTP 403\): key"):
        await h.call(sb, "run", "ls", on_stdout=print)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    sb = await sandbox_at(h, f"http://127.0.0.1:{port}")
    with pytest.raises(SandboxConnectionError, match="Failed to connect to sandbox"):
        await h.call(sb, "reconnect", CMD_ID)
    assert h.requests == []


@pytest.mark.parametrize("status", [404, 403, 502])
async def test_run_falls_back_to_http_when_the_upgrade_is_refused(
    server: ScriptedServer, h: Harness, status: int
) -> None:
    """wait=True without callbacks: a refused upgrade runs the command over HTTP once."""
    server.statuses = [status]
    sb = await sandbox_at(h, server.dataplane)
    result = await h.call(sb, "run", "ls", timeout=None, env={"A": "1"}, pty=True)
    assert result.stdout == "over http\n"
    assert len(server.upgrades) == 1
    assert [str(r.url) for r in h.requests] == [f"{server.dataplane}/execute"]
    assert h.body() == {"command": "ls", "timeout": 0, "shell": "/bin/bash", "env": {"A": "1"}}


async def test_without_websockets(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """No websockets package: run() uses HTTP; streaming calls raise ImportError."""
    for name in list(sys.modules):
        if name == "websockets" or name.startswith("websockets."):
            monkeypatch.setitem(sys.modules, name, None)
    sb = await sandbox_at(h, "http://dp.test/sb-1")
    assert (await h.call(sb, "run", "ls")).stdout == "over http\n"
    for kwargs in ({"wait": False}, {"on_stdout": print}, {"stdin": "x"}):
        with pytest.raises(ImportError, match="requires the 'websockets' package"):
            await h.call(sb, "run", "ls", **kwargs)
    with pytest.raises(ImportError, match="hutch\\[ws\\]"):
        await h.call(sb, "reconnect", CMD_ID)


async def test_argument_checks(h: Harness) -> None:
    """Callbacks with wait=False and out-of-range limits fail before any connection."""
    sb = await sandbox_at(h, "http://dp.test/sb-1")
    with pytest.raises(ValueError, match="wait=False"):
        await h.call(sb, "run", "ls", wait=False, on_stderr=print)
    with pytest.raises(ValueError, match="timeout"):
        await h.call(sb, "run", "ls", timeout=-1)
    with pytest.raises(ValueError, match="idle_timeout"):
        await h.call(sb, "run", "ls", idle_timeout=-2)
    with pytest.raises(ValueError, match="ttl_seconds"):
        await h.call(sb, "run", "ls", ttl_seconds=-5)
    with pytest.raises(ValueError, match="NUL"):
        await h.call(sb, "run", "a\x00b")
    assert h.requests == []


async def test_none_limits_become_the_wire_sentinels(server: ScriptedServer, h: Harness) -> None:
    """timeout/idle_timeout/ttl_seconds None are sent as 0, -1, -1; extras only when given."""

    def script(peer: Peer) -> None:
        peer.started()
        peer.exit(0)

    server.scripts = [script]
    sb = await sandbox_at(h, server.dataplane)
    await h.call(
        sb,
        "run",
        "job",
        timeout=None,
        idle_timeout=None,
        ttl_seconds=None,
        kill_on_disconnect=True,
        env={"A": "1"},
        cwd="/srv",
        pty=True,
        command_id="my-job-1",
    )
    assert server.wait(0).received[0] == {
        "type": "execute",
        "command": "job",
        "timeout_seconds": 0,
        "shell": "/bin/bash",
        "idle_timeout_seconds": -1,
        "kill_on_disconnect": True,
        "ttl_seconds": -1,
        "env": {"A": "1"},
        "cwd": "/srv",
        "pty": True,
        "command_id": "my-job-1",
        "close_stdin": True,
    }
