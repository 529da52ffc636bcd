"""Streaming execution (``/execute/ws``, spec §4) through the hutch SDK against a real server."""

from __future__ import annotations

import pytest

from hutch import (
    AsyncSandboxClient,
    CommandTimeoutError,
    Sandbox,
    SandboxConnectionError,
    SandboxOperationError,
)
from tests.conftest import Server

pytestmark = pytest.mark.root


def test_callbacks_stream_over_the_websocket(sandbox: Sandbox) -> None:
    """Example A with callbacks (WebSocket only, no HTTP fallback): chunks and the result."""
    out: list[str] = []
    err: list[str] = []
    result = sandbox.run(
        "echo hello; echo oops >&2; exit 3", on_stdout=out.append, on_stderr=err.append
    )
    assert (result.stdout, result.stderr, result.exit_code) == ("hello\n", "oops\n", 3)
    assert ("".join(out), "".join(err)) == ("hello\n", "oops\n")


def test_handle_offsets_count_utf8_bytes(sandbox: Sandbox) -> None:
    """wait=False: chunks carry byte offsets; "a\\n" + "ü€😀\\n" ends stdout at byte 12."""
    handle = sandbox.run("printf 'a\\n'; sleep 0.2; printf 'ü€😀\\n'", wait=False)
    assert handle.command_id and handle.pid
    chunks = list(handle)
    assert "".join(c.data for c in chunks) == "a\nü€😀\n"
    assert chunks[0].offset == 0
    assert handle.last_stdout_offset == 12
    assert handle.result.exit_code == 0


def test_stdin(sandbox: Sandbox) -> None:
    """Example C: send_input reaches the command's stdin; run(stdin=...) closes it after."""
    handle = sandbox.run("read x; echo got:$x", timeout=10, wait=False)
    handle.send_input("world\n")
    assert handle.result.stdout == "got:world\n"
    assert sandbox.run("cat", stdin="hi\n").stdout == "hi\n"


def test_kill_then_reconnect_reports_137(sandbox: Sandbox) -> None:
    """kill() ends the command; iterating raises; a reconnect replays it and shows exit 137."""
    handle = sandbox.run("echo Ready; sleep 600", timeout=0, wait=False)
    assert next(iter(handle)).data == "Ready\n"
    handle.kill()
    with pytest.raises(SandboxConnectionError, match="killed"):
        list(handle)
    result = sandbox.reconnect(handle.command_id).result
    assert (result.stdout, result.exit_code) == ("Ready\n", 137)


def test_timeout_raises_command_timeout_error(sandbox: Sandbox) -> None:
    """Example D: the server's CommandTimeout error becomes CommandTimeoutError."""
    with pytest.raises(CommandTimeoutError, match="timed out"):
        sandbox.run("sleep 5", timeout=1)


def test_reconnect_unknown_command(sandbox: Sandbox) -> None:
    """Reconnecting to an id the server never saw raises CommandNotFound."""
    with pytest.raises(SandboxOperationError) as info:
        list(sandbox.reconnect("0" * 32))
    assert (info.value.operation, info.value.error_type) == ("reconnect", "CommandNotFound")


async def test_async_handle(server: Server, sandbox: Sandbox) -> None:
    """The async client streams a handle and awaits its result."""
    async with AsyncSandboxClient(api_endpoint=server.base, api_key=server.key) as client:
        sb = await client.get_sandbox(sandbox.name)
        handle = await sb.run("echo one; echo two >&2", wait=False)
        chunks = [chunk async for chunk in handle]
        assert {(c.stream, c.data) for c in chunks} == {("stdout", "one\n"), ("stderr", "two\n")}
        assert (await handle.result).exit_code == 0
        replay = await sb.reconnect(handle.command_id)
        assert (await replay.result).stdout == "one\n"
