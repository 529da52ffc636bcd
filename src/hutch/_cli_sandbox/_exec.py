"""``hutch sandbox exec`` and ``hutch sandbox logs``: a command's output streamed live over the
exec WebSocket, with the local stdin forwarded and signals turned into a remote kill."""

from __future__ import annotations

import asyncio
import codecs
import os
import shlex
import signal
import stat
import sys
from typing import TYPE_CHECKING

import typer

from hutch._cli_sandbox._common import (
    Connection,
    JsonOption,
    conn,
    errors,
    fail,
    parse_duration,
    parse_pairs,
    print_json,
    require_ready,
)
from hutch._cli_sandbox._control import sandbox_app

if TYPE_CHECKING:
    from collections.abc import Callable

    from hutch.client import AsyncCommandHandle, OutputChunk

#: Bytes read from the local stdin at a time (also the most held before it is sent).
CHUNK = 64 * 1024
#: Signals that stop ``exec`` (and kill the remote command): Ctrl-C, kill, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Without ``--follow``, ``logs`` of a running command ends once output pauses this long.
QUIET_SECONDS = 0.5


async def read_fd(fd: int) -> bytes:
    """The next bytes of ``fd`` (``b""`` at end of file), waiting in the event loop when it is
    a pipe, socket or terminal; regular files (which never block) are read directly."""
    loop = asyncio.get_running_loop()
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return os.read(fd, CHUNK)
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    try:
        loop.add_reader(fd, wake)
    except (PermissionError, ValueError):
        return os.read(fd, CHUNK)  # epoll refuses it (e.g. /dev/null): it never blocks
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    try:
        return os.read(fd, CHUNK)
    except BlockingIOError:
        return await read_fd(fd)


async def pump_stdin(handle: AsyncCommandHandle, fd: int = 0) -> None:
    """Forward ``fd`` to the command's stdin (as UTF-8 text: the wire carries text) until end
    of file, then close it. Stops quietly when the command has gone."""
    from hutch.client import SandboxClientError

    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    try:
        while data := await read_fd(fd):
            text = decoder.decode(data)
            if text:
                await handle.send_input(text)
        tail = decoder.decode(b"", final=True)
        if tail:
            await handle.send_input(tail)
        await handle.close_stdin()
    except SandboxClientError:
        return  # it exited (or the connection is lost, which the output side reports)


def write_chunk(chunk: OutputChunk) -> None:
    stream = sys.stdout if chunk.stream == "stdout" else sys.stderr
    stream.buffer.write(chunk.data.encode("utf-8", "replace"))
    stream.buffer.flush()


async def stream_until_exit(handle: AsyncCommandHandle, *, forward_stdin: bool) -> int:
    """Print the command's output as it comes (stdout to stdout, stderr to stderr), forward
    stdin if asked, and return its exit code; a stop signal kills it (128 + the signal)."""
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    caught: list[int] = []

    def on_signal(signum: int) -> None:
        if not caught:
            caught.append(signum)
            me.cancel()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    pump = asyncio.create_task(pump_stdin(handle)) if forward_stdin else None
    try:
        async for chunk in handle:
            write_chunk(chunk)
        return (await handle.result).exit_code
    except asyncio.CancelledError:
        if not caught:
            raise
        me.uncancel()
        await handle.kill()
        return 128 + caught[0]
    except BrokenPipeError:
        # Our reader went away (``| head``): the command has no one to write to either.
        await handle.kill()
        # Python's exit flushes stdout again: point it at /dev/null so that is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)


async def _exec(
    connection: Connection,
    name: str,
    command: str,
    *,
    env: dict[str, str] | None,
    cwd: str | None,
    timeout: int | None,
    shell: str,
    detach: bool,
    command_id: str | None,
) -> int:
    from hutch.client import CommandTimeoutError

    forward = not detach and not sys.stdin.isatty()
    async with connection.async_client() as client:
        sb = await client.get_sandbox(name)
        require_ready(sb)
        handle = await sb.run(
            command,
            wait=False,
            timeout=timeout,
            env=env,
            cwd=cwd,
            shell=shell,
            command_id=command_id,
            # A terminal's input is not forwarded: the command reads end-of-file at once.
            stdin=None if forward else "",
            keep_output=False,  # printed as it comes: a chatty command must not fill our memory
        )
        if detach:
            typer.echo(handle.command_id)
            await handle.aclose()
            return 0
        try:
            return await stream_until_exit(handle, forward_stdin=forward)
        except CommandTimeoutError as exc:
            fail(str(exc), 124)


@sandbox_app.command("exec")
def sandbox_exec(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The sandbox"),
    argv: list[str] = typer.Argument(..., help="The command and its arguments (after --)"),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE variable (repeatable)"),
    cwd: str | None = typer.Option(None, "--cwd", "-w", help="Working directory"),
    timeout: str = typer.Option(
        "0", "--timeout", help="Kill the command after this long (30s, 10m; 0: never)"
    ),
    shell: str = typer.Option("/bin/sh", "--shell", help="Shell that runs the command line"),
    detach: bool = typer.Option(
        False, "--detach", "-d", help="Start it, print its command id and return"
    ),
    command_id: str | None = typer.Option(None, "--id", help="Id to give the command"),
) -> None:
    """Run a command in a sandbox, streaming its output; exit with its exit code.

    Its stdout and stderr go to yours, a piped stdin is forwarded, Ctrl-C kills it. The
    arguments are quoted for --shell -c: exec sb -- ls "my dir" lists one directory; for the
    sandbox's pipes and variables use exec sb -- sh -c 'echo $HOME'.
    """
    command = shlex.join(argv)
    seconds = parse_duration(timeout, "--timeout")
    variables = parse_pairs(env, "--env")
    with errors():
        code = asyncio.run(
            _exec(
                conn(ctx),
                name,
                command,
                env=variables or None,
                cwd=cwd,
                timeout=seconds or None,
                shell=shell,
                detach=detach,
                command_id=command_id,
            )
        )
    raise typer.Exit(code)


async def _replay(
    handle: AsyncCommandHandle, on_chunk: Callable[[OutputChunk], None]
) -> int | None:
    """Pass the command's output to ``on_chunk``; its exit code if it exited, None if it still
    runs (a running command's replay has no end marker: it is over once output pauses)."""
    try:
        while True:
            on_chunk(await asyncio.wait_for(anext(handle), QUIET_SECONDS))
    except StopAsyncIteration:
        return (await handle.result).exit_code
    except TimeoutError:
        return None
    finally:
        await handle.aclose()


async def _logs(
    connection: Connection, name: str, command_id: str, follow: bool, as_json: bool
) -> int | None:
    """Print the command's output (replayed from the start); its exit code if it has exited."""
    async with connection.async_client() as client:
        sb = await client.get_sandbox(name)
        require_ready(sb)
        handle = await sb.reconnect(command_id, keep_output=False)
        if follow:
            return await stream_until_exit(handle, forward_stdin=False)
        if not as_json:
            return await _replay(handle, write_chunk)
        streams: dict[str, list[str]] = {"stdout": [], "stderr": []}
        code = await _replay(handle, lambda chunk: streams[chunk.stream].append(chunk.data))
    print_json(
        {
            "command_id": command_id,
            "stdout": "".join(streams["stdout"]),
            "stderr": "".join(streams["stderr"]),
            "exit_code": code,
        }
    )
    return code


@sandbox_app.command("logs")
def sandbox_logs(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The sandbox"),
    command_id: str = typer.Argument(..., help="The command's id (exec --detach prints it)"),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Keep streaming until the command exits (then exit as it)"
    ),
    as_json: bool = JsonOption,
) -> None:
    """Print the output of a running or finished command, from its start.

    As far as the server still keeps it; --follow streams until the command exits.
    """
    if follow and as_json:
        fail("give --follow or --json, not both", 2)
    with errors():
        code = asyncio.run(_logs(conn(ctx), name, command_id, follow, as_json))
    raise typer.Exit(code if follow and code is not None else 0)
