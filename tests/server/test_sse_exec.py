"""Command sessions over Server-Sent Events (spec §9.1 "Exec over SSE").

Raw HTTP against a real server (event order, byte-exact base64 output and offsets, resumes,
``ack_required`` bounds, error envelopes, the same sessions as ``/execute/ws``), the public
langsmith 0.15.1 SDK with ``LANGSMITH_EXPERIMENTAL_FEATURES=sandbox_sse_exec``, and in-process
tests of what needs a small bound or a fake client (heartbeats, time bound, shutdown,
disconnect).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hutch import Sandbox, SandboxClient
from hutch.server import _sse_exec
from hutch.server._sse_exec import EventStream, EventStreamResponse, Limits
from hutch.sessions import CommandSession, Output, RawOutput
from tests.compat._venvs import NEWEST_015, langsmith_python
from tests.conftest import TIME_SCALE, Server, wait_until
from tests.sessions.conftest import DEADLINE, NO_LIMITS, session_manager, sh

root = pytest.mark.root

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024
PROMPT = 5 * TIME_SCALE
FREEZER = Path("/sys/fs/cgroup/freezer")

Events = list[tuple[str, Any]]


# -- reading SSE ---------------------------------------------------------------------------------


def parse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """``(event, JSON payload)`` pairs; a comment line comes as ``(":", its text)``."""
    event, data = "", []
    for line in lines:
        if not line:
            if event:
                yield event, json.loads("\n".join(data))
            event, data = "", []
        elif line.startswith(":"):
            yield ":", line
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
    assert not event, "the response ended inside an event"


def post(http: httpx.Client, sb: Sandbox, which: str, body: dict[str, Any]) -> Events:
    """Every event of one response of ``/execute/stream/<which>`` (200 required)."""
    with http.stream("POST", f"{sb.dataplane_url}/execute/stream/{which}", json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        return list(parse(r.iter_lines()))


def output(events: Events, stream: str, start: int = 0) -> bytes:
    """The raw bytes of ``stream``, checking that offsets follow each other byte for byte."""
    data, position = b"", start
    for kind, payload in events:
        if kind == stream:
            assert payload["offset"] == position, (payload["offset"], position)
            chunk = base64.b64decode(payload["data"], validate=True)
            data += chunk
            position += len(chunk)
    return data


def kinds(events: Events) -> list[str]:
    """Event names with runs of the same output stream collapsed, heartbeats dropped."""
    out: list[str] = []
    for kind, _ in events:
        if kind != ":" and not (out and out[-1] == kind and kind in ("stdout", "stderr")):
            out.append(kind)
    return out


def cid() -> str:
    return secrets.token_hex(16)


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sb(client: SandboxClient, bb_template: str) -> Iterator[Sandbox]:
    with client.sandbox(bb_template) as box:
        yield box


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with server.http() as h:
        yield h


# -- raw HTTP against a real server --------------------------------------------------------------


@root
def test_start_streams_started_output_stream_end_and_exit_in_order(
    http: httpx.Client, sb: Sandbox
) -> None:
    """started first, then output with per-stream offsets, stream_end at each length, exit last."""
    command_id = cid()
    events = post(
        http,
        sb,
        "start",
        {"command": "echo hi; echo oops >&2; echo there; exit 3", "command_id": command_id},
    )
    assert events[0][0] == "started"
    assert events[0][1]["command_id"] == command_id
    assert isinstance(events[0][1]["pid"], int)
    assert output(events, "stdout") == b"hi\nthere\n"
    assert output(events, "stderr") == b"oops\n"
    assert events[-3:] == [
        ("stream_end", {"stream": "stdout", "offset": 9}),
        ("stream_end", {"stream": "stderr", "offset": 5}),
        ("exit", {"exit_code": 3}),
    ]


@root
def test_output_is_the_raw_bytes_with_exact_offsets(http: httpx.Client, sb: Sandbox) -> None:
    """Binary output and invalid UTF-8 arrive byte for byte (no '?'), offsets count raw bytes."""
    events = post(
        http,
        sb,
        "start",
        {
            "command": "head -c 300000 /dev/urandom > /tmp/r.bin; cat /tmp/r.bin;"
            r" printf '\377\000\303(\342\202' >&2",
            "command_id": cid(),
        },
    )
    got = output(events, "stdout")
    expected = http.get(f"{sb.dataplane_url}/download", params={"path": "/tmp/r.bin"}).content
    assert len(got) == 300000
    assert got == expected
    assert output(events, "stderr") == b"\xff\x00\xc3(\xe2\x82"
    assert ("stream_end", {"stream": "stderr", "offset": 6}) in events


@root
def test_resume_from_mid_offsets_gets_exactly_the_rest(http: httpx.Client, sb: Sandbox) -> None:
    """A resume from byte offsets (even inside a character) replays exactly the bytes after them."""
    command_id = cid()
    full = post(
        http,
        sb,
        "start",
        {
            "command": "printf 'h\\303\\251llo w\\303\\266rld'; printf 'e1e2e3' >&2",
            "command_id": command_id,
        },
    )
    stdout, stderr = output(full, "stdout"), output(full, "stderr")
    assert stdout == "héllo wörld".encode()
    for at_out, at_err in ((2, 4), (7, 0), (len(stdout), len(stderr))):
        rest = post(
            http,
            sb,
            "resume",
            {"command_id": command_id, "stdout_offset": at_out, "stderr_offset": at_err},
        )
        assert rest[0] == ("started", {"command_id": command_id, "pid": full[0][1]["pid"]})
        assert output(rest, "stdout", start=at_out) == stdout[at_out:]
        assert output(rest, "stderr", start=at_err) == stderr[at_err:]
        assert rest[-1] == ("exit", {"exit_code": 0})


@root
def test_large_output_ends_responses_with_ack_required_and_resumes_without_gap(
    http: httpx.Client, sb: Sandbox
) -> None:
    """Past 8 MiB a response ends with ack_required at the offsets sent; resuming from them
    continues byte for byte to the exit."""
    size = 9 * MiB + 123
    command_id = cid()
    responses = [
        post(
            http,
            sb,
            "start",
            {"command": f"head -c {size} /dev/zero | tr '\\0' a", "command_id": command_id},
        )
    ]
    got = b""
    while True:
        events = responses[-1]
        got += output(events, "stdout", start=len(got))
        kind, payload = events[-1]
        if kind == "exit":
            break
        assert kind == "ack_required", events[-1]
        assert payload == {"stdout_offset": len(got), "stderr_offset": 0}
        assert len(responses) < 5, "too many responses for 9 MiB"
        responses.append(post(http, sb, "resume", {"command_id": command_id, **payload}))
    assert len(responses) >= 2
    first = len(output(responses[0], "stdout"))
    assert 8 * MiB <= first < 8 * MiB + 64 * 1024 + 1
    assert got == b"a" * size


@root
def test_resume_of_unknown_id_is_404_and_of_expired_session_410(
    http: httpx.Client, sb: Sandbox
) -> None:
    """Resume errors are envelopes before any stream: CommandNotFound 404, SessionExpired 410."""
    url = f"{sb.dataplane_url}/execute/stream/resume"
    r = http.post(url, json={"command_id": cid(), "stdout_offset": 0, "stderr_offset": 0})
    assert r.status_code == 404
    assert r.json()["detail"]["error"] == "CommandNotFound"

    command_id = cid()
    events = post(
        http, sb, "start", {"command": "true", "command_id": command_id, "ttl_seconds": 0}
    )
    assert events[-1] == ("exit", {"exit_code": 0})
    # ttl 0: the session expires as soon as its last client (that response) detaches.
    assert wait_until(lambda: http.post(url, json={"command_id": command_id}).status_code == 410)
    r = http.post(url, json={"command_id": command_id})
    assert r.json()["detail"]["error"] == "SessionExpired"
    assert "ttl_seconds" in r.json()["detail"]["message"]


@root
def test_bad_requests_get_the_error_envelope(
    server: Server, http: httpx.Client, sb: Sandbox
) -> None:
    """Unknown or WebSocket-only fields, bad values, no key and unknown sandboxes are refused
    with the usual envelope before anything runs."""
    start = f"{sb.dataplane_url}/execute/stream/start"
    for body, needle in [
        ({"command": "true", "bogus": 1}, "unknown field 'bogus'"),
        ({"command": "true", "pty": True}, "'pty' is not available over SSE"),
        ({"command": "true", "run_config": {"shell": "x"}}, "run_config: unknown field 'shell'"),
        ({"command": "true", "run_config": {"work_dir": "rel"}}, "absolute path"),
        ({"command": "true", "timeout_seconds": "5"}, "timeout_seconds"),
        ({"command": "true", "ttl_seconds": -2}, "ttl_seconds"),
        ({"command": "true", "command_id": "has space"}, "command_id"),
        ({"command": "true", "env": {"A=B": "c"}}, "env name"),
        ({"shell": "/bin/sh"}, "field 'command' is required"),
    ]:
        r = http.post(start, json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["detail"]["error"] == "ValidationError"
        assert needle in r.json()["detail"]["message"], (needle, r.text)
    resume = f"{sb.dataplane_url}/execute/stream/resume"
    r = http.post(resume, json={"command_id": cid(), "stdout_offset": -1})
    assert r.status_code == 422
    r = http.post(start, json={"command": "true", "cwd": "/no/such/dir"})
    assert r.status_code == 400
    assert r.json()["detail"]["error"] == "CommandError"
    with server.http(key="wrong") as stranger:
        assert stranger.post(start, json={"command": "true"}).status_code == 401
    other = f"{server.url}/dp/{secrets.token_hex(16)}/execute/stream/start"
    r = http.post(other, json={"command": "true"})
    assert r.status_code == 404
    assert r.json()["detail"]["error"] == "NotFound"


@root
def test_same_command_id_attaches_instead_of_spawning_twice(
    http: httpx.Client, sb: Sandbox
) -> None:
    """A start re-sent with the same command_id replays the one command (get-or-create)."""
    command_id = cid()
    body = {
        "command": f"echo ran >> /tmp/{command_id}; cat /tmp/{command_id}",
        "command_id": command_id,
    }
    first = post(http, sb, "start", body)
    again = post(http, sb, "start", body)
    assert first[0] == again[0]
    assert output(first, "stdout") == output(again, "stdout") == b"ran\n"


def _command_procs(sb: Sandbox) -> dict[int, str]:
    """Host pids (with start times) in the per-command freezer cgroups of a sandbox."""
    found: dict[int, str] = {}
    for procs in (FREEZER / "hutch" / str(sb.id)).glob("*/cgroup.procs"):
        try:
            pids = [int(p) for p in procs.read_text().split()]
        except FileNotFoundError:
            continue
        for pid in pids:
            start = _start_time(pid)
            if start is not None:
                found[pid] = start
    return found


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@root
def test_client_disconnect_detaches_so_the_idle_timeout_applies(
    http: httpx.Client, sandbox: Sandbox
) -> None:
    """Closing the response detaches its subscriber: idle_timeout then kills the command (137)."""
    command_id = cid()
    url = f"{sandbox.dataplane_url}/execute/stream/start"
    body = {"command": "echo up; sleep 600", "command_id": command_id, "idle_timeout_seconds": 1}
    with http.stream("POST", url, json=body) as r:
        for kind, _ in parse(r.iter_lines()):
            if kind == "stdout":
                break
        procs = _command_procs(sandbox)
        assert procs
    assert wait_until(lambda: all(_start_time(p) != s for p, s in procs.items()), 1 + PROMPT), (
        "the command outlived its idle timeout after the client went away"
    )
    rest = post(http, sandbox, "resume", {"command_id": command_id, "stdout_offset": 3})
    assert output(rest, "stdout", start=3) == b""
    assert rest[-1] == ("exit", {"exit_code": 137})


@root
def test_sse_and_websocket_share_command_sessions(http: httpx.Client, sb: Sandbox) -> None:
    """A command started over SSE continues over the exec WebSocket, and the reverse."""
    command_id = cid()
    url = f"{sb.dataplane_url}/execute/stream/start"
    body = {"command": "echo one; sleep 1; echo two", "command_id": command_id}
    with http.stream("POST", url, json=body) as r:
        for kind, payload in parse(r.iter_lines()):
            if kind == "stdout":
                assert base64.b64decode(payload["data"]) == b"one\n"
                break
    handle = sb.reconnect(command_id, stdout_offset=4)
    result = handle.result
    assert (result.stdout, result.exit_code) == ("two\n", 0)

    ws = sb.run("echo from-ws; echo err >&2; exit 5", wait=False)
    assert ws.result.exit_code == 5
    assert ws.command_id is not None
    events = post(http, sb, "resume", {"command_id": ws.command_id})
    assert output(events, "stdout") == b"from-ws\n"
    assert output(events, "stderr") == b"err\n"
    assert events[-1] == ("exit", {"exit_code": 5})


# -- the public langsmith SDK over SSE -----------------------------------------------------------


@root
def test_langsmith_sdk_runs_commands_over_sse(server: Server, sb: Sandbox) -> None:
    """langsmith 0.15.1 with sandbox_sse_exec: run, callbacks, exit codes, run_config, 9 MiB
    with transparent resumes, raw bytes, timeouts and reconnects all work over SSE alone."""
    python = langsmith_python(NEWEST_015, websockets=True)
    env = {
        **os.environ,
        "LANGSMITH_ENDPOINT": f"{server.url}/api",
        "LANGSMITH_API_KEY": server.key,
        "LANGSMITH_EXPERIMENTAL_FEATURES": "sandbox_sse_exec",
    }
    proc = subprocess.run(
        [str(python), str(HERE / "sse_langsmith_flow.py"), sb.name],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"start", "resume"} <= set(got["paths"]), got["paths"]
    assert got["echo"] == {"stdout": "hi\n", "stderr": "", "exit_code": 0}
    assert got["callbacks"] == {
        "stdout": "line1\nline2\nline3\n",
        "stderr": "oops\n",
        "result": {"stdout": "line1\nline2\nline3\n", "stderr": "oops\n", "exit_code": 0},
    }
    assert got["failing"] == {"stdout": "", "stderr": "bad\n", "exit_code": 7}
    assert got["run_config"] == {"stdout": "bar:/tmp\n", "stderr": "", "exit_code": 0}
    assert got["env_cwd"] == {"stdout": "baz:/home/user\n", "stderr": "", "exit_code": 0}
    # Raw bytes: the SDK decodes them itself, so an invalid byte becomes U+FFFD, not '?'.
    assert got["bytes"] == {"stdout": "hé\ufffd", "stderr": "", "exit_code": 0}
    big = got["big"]
    assert big["size"] == 9 * MiB and big["only_a"] and big["contiguous"], big
    assert big["exit_code"] == 0
    assert big["requests"][0] == "start" and "resume" in big["requests"], big["requests"]
    assert got["timeout"]["raised"] == "CommandTimeoutError", got["timeout"]
    assert got["reconnect"] == {"first": "abcdef", "rest": "cdef"}
    assert got["unknown"] == {"type": "SandboxOperationError", "error_type": "CommandNotFound"}


# -- in process: bounds, heartbeats, shutdown, disconnect ----------------------------------------


class FakeClient:
    """An ASGI peer for :class:`EventStreamResponse`: records what is sent, disconnects on cue."""

    def __init__(self) -> None:
        self.body = b""
        self.complete = False
        self.gone = asyncio.Event()
        self._sent = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            self.complete = not message.get("more_body", False)
        self._sent.set()
        self._sent = asyncio.Event()

    def events(self) -> Events:
        return list(parse(iter(self.body.decode().split("\n"))))

    async def until(self, event: str) -> None:
        """Wait (bounded) until an event of this name was sent."""
        async with asyncio.timeout(DEADLINE):
            while not any(kind == event for kind, _ in self.events()):
                await self._sent.wait()


async def serve(
    owner: object,
    session: CommandSession,
    peer: FakeClient,
    limits: Limits,
    offsets: tuple[int, int] = (0, 0),
) -> asyncio.Task[None]:
    """Serve one response of ``session`` from ``offsets`` to ``peer`` (a task to await)."""
    stream = EventStream(owner, session, session.attach(*offsets), offsets, limits)
    response = EventStreamResponse(stream)
    return asyncio.create_task(response({"type": "http"}, peer.receive, peer.send))  # type: ignore[arg-type]


async def test_raw_view_keeps_invalid_bytes_at_the_text_views_offsets() -> None:
    """Subscription.next_raw yields the bytes the command wrote, cut where the text view cuts."""
    async with session_manager() as mgr:
        cmd = r"printf '\377ab\303(\342\202'; printf 'x\200' >&2"
        session, _ = await mgr.start("o", sh(cmd), NO_LIMITS)
        await session.wait()
        with session.attach() as text_view, session.attach() as raw_view:
            texts = [e async for e in text_view]
            raws = []
            while (event := await raw_view.next_raw()) is not None:
                raws.append(event)
        assert [type(e).__name__ for e in raws][-1] == "Exit"
        out = [e for e in raws if isinstance(e, RawOutput)]
        assert b"".join(e.data for e in out if e.stream == "stdout") == b"\xffab\xc3(\xe2\x82"
        assert b"".join(e.data for e in out if e.stream == "stderr") == b"x\x80"
        assert [(e.stream, e.offset) for e in out] == [
            (e.stream, e.offset) for e in texts if isinstance(e, Output)
        ]


async def test_quiet_stream_sends_heartbeats_then_ack_required_at_the_time_bound() -> None:
    """A stream with no output pings every heartbeat and ends with ack_required at the time
    bound, leaving the command running for the resume."""
    async with session_manager() as mgr:
        session, _ = await mgr.start("o", sh("read line"), NO_LIMITS)
        peer = FakeClient()
        task = await serve(object(), session, peer, Limits(max_seconds=0.5, heartbeat=0.05))
        async with asyncio.timeout(DEADLINE):
            await task
        events = peer.events()
        assert events[0][0] == "started"
        assert (":", ": ping") in events
        assert events[-1] == ("ack_required", {"stdout_offset": 0, "stderr_offset": 0})
        assert peer.complete
        assert session.running and session.subscribers == 0


async def test_byte_bound_splits_output_into_responses_without_loss() -> None:
    """With a small byte bound every response ends with ack_required; chaining resumes from its
    offsets yields every byte once."""
    size = 300_000
    async with session_manager() as mgr:
        session, _ = await mgr.start("o", sh(f"head -c {size} /dev/zero | tr '\\0' b"), NO_LIMITS)
        offsets, got, responses = (0, 0), b"", 0
        while True:
            peer = FakeClient()
            task = await serve(object(), session, peer, Limits(max_bytes=100_000), offsets)
            async with asyncio.timeout(DEADLINE):
                await task
            responses += 1
            events = peer.events()
            got += output(events, "stdout", start=len(got))
            kind, payload = events[-1]
            if kind == "exit":
                break
            assert kind == "ack_required"
            offsets = (payload["stdout_offset"], payload["stderr_offset"])
            assert offsets == (len(got), 0)
        assert got == b"b" * size
        assert responses >= 3


async def test_close_all_ends_open_streams_with_server_shutting_down() -> None:
    """close_all sends error ServerShuttingDown to this server's streams only, waits until they
    are sent, and leaves the commands running (the client resumes)."""
    owner, other_owner = object(), object()
    async with session_manager() as mgr:
        session, _ = await mgr.start("o", sh("echo up; read line"), NO_LIMITS)
        mine, other = FakeClient(), FakeClient()
        limits = Limits(max_seconds=DEADLINE, heartbeat=DEADLINE)
        task = await serve(owner, session, mine, limits)
        other_task = await serve(other_owner, session, other, limits)
        await mine.until("stdout")
        await other.until("stdout")
        async with asyncio.timeout(DEADLINE):
            await _sse_exec.close_all(owner)
        assert task.done() and mine.complete
        assert mine.events()[-1] == (
            "error",
            {
                "error_type": "ServerShuttingDown",
                "error": "The server is shutting down; resume from your offsets",
            },
        )
        assert not other_task.done()
        assert session.running and session.subscribers == 1
        other.gone.set()
        async with asyncio.timeout(DEADLINE):
            await other_task


async def test_client_disconnect_detaches_at_once() -> None:
    """A client that goes away mid-stream ends the response and detaches its subscriber, so the
    session's idle timeout runs again."""
    async with session_manager() as mgr:
        session, _ = await mgr.start("o", sh("echo up; read line"), NO_LIMITS)
        peer = FakeClient()
        task = await serve(object(), session, peer, Limits())
        await peer.until("stdout")
        assert session.subscribers == 1
        peer.gone.set()
        async with asyncio.timeout(DEADLINE):
            await task
        assert session.subscribers == 0 and not peer.complete
