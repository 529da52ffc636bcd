"""``hutch sandbox shell``: an interactive PTY session in a sandbox.

The local terminal is put in raw mode (restored on every way out), its size is sent at the start
and on each SIGWINCH, and keystrokes go to the remote PTY as they are typed. Ctrl-] detaches:
the remote shell goes on (until ``--idle-timeout`` without a client), its command id is printed,
and ``shell NAME --attach ID`` re-attaches to it.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import shutil
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from hutch._cli_sandbox._common import Connection, conn, errors, fail, parse_duration, require_ready
from hutch._cli_sandbox._control import sandbox_app
from hutch._cli_sandbox._exec import read_fd

if TYPE_CHECKING:
    from hutch.client import AsyncCommandHandle

#: The detach key: Ctrl-] (as telnet's escape), a byte no shell binds by default.
DETACH = b"\x1d"
#: Run when no ``--command`` is given: bash if the image has it, else sh.
DEFAULT_SHELL = "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"
#: Signals that end the session locally (the remote shell goes on, as after a detach).
HANGUP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """``fd`` in raw mode for the block; its previous settings come back however it ends."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSADRAIN)  # keeps what was typed ahead
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _size() -> tuple[int, int]:
    try:
        cols, rows = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        cols, rows = shutil.get_terminal_size()
    return max(rows, 1), max(cols, 1)


async def _output(handle: AsyncCommandHandle) -> int:
    """Copy the PTY's output to the terminal; the shell's exit code once it exits."""
    out = sys.stdout.fileno()
    async for chunk in handle:
        data = chunk.data.encode("utf-8", "replace")
        while data:
            data = data[os.write(out, data) :]
    return (await handle.result).exit_code


async def _input(handle: AsyncCommandHandle) -> None:
    """Send keystrokes until the detach key (returns) or the end of the local input."""
    from hutch.client import SandboxClientError

    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    while data := await read_fd(sys.stdin.fileno()):
        before, detach, _ = data.partition(DETACH)
        text = decoder.decode(before)
        try:
            if text:
                await handle.send_input(text)
        except SandboxClientError:
            # The shell exited (or the stream broke): the output side ends with the reason.
            await asyncio.Event().wait()
        if detach:
            return
    # End of input (the terminal went away): leave the shell running, as a detach.


async def _resizes(handle: AsyncCommandHandle) -> None:
    """Send the terminal's size now and after every SIGWINCH."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    loop.add_signal_handler(signal.SIGWINCH, changed.set)
    from hutch.client import SandboxClientError

    try:
        while True:
            await handle.resize(*_size())
            await changed.wait()
            changed.clear()
    except SandboxClientError:
        return  # the shell exited: the output side ends the session
    finally:
        loop.remove_signal_handler(signal.SIGWINCH)


async def _session(handle: AsyncCommandHandle) -> int | None:
    """Run the terminal session; the shell's exit code, or None once detached."""
    loop = asyncio.get_running_loop()
    hangup = asyncio.Event()
    for signum in HANGUP_SIGNALS:
        loop.add_signal_handler(signum, hangup.set)
    output = asyncio.create_task(_output(handle))
    # Any of these ending ends the session: the shell exited, Ctrl-] (or no more input), or a
    # hangup; the resize task only runs alongside.
    ending = [output, asyncio.create_task(_input(handle)), asyncio.create_task(hangup.wait())]
    tasks = [*ending, asyncio.create_task(_resizes(handle))]
    try:
        await asyncio.wait(ending, return_when=asyncio.FIRST_COMPLETED)
        if output.done():
            return output.result()
        return None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for signum in HANGUP_SIGNALS:
            loop.remove_signal_handler(signum)


async def _shell(
    connection: Connection,
    name: str,
    command: str,
    attach: str | None,
    idle_timeout: int | None,
) -> int:
    async with connection.async_client() as client:
        sb = await client.get_sandbox(name)
        require_ready(sb)
        if attach:
            handle = await sb.reconnect(attach, keep_output=False)
        else:
            handle = await sb.run(
                command,
                wait=False,
                pty=True,
                timeout=None,
                shell="/bin/sh",
                idle_timeout=idle_timeout,
                env={"TERM": os.environ.get("TERM") or "xterm-256color"},
                keep_output=False,
            )
        fd = sys.stdin.fileno()
        try:
            with raw_terminal(fd):
                code = await _session(handle)
        finally:
            await handle.aclose()
    if code is None:
        typer.echo(
            # On a line of its own: the shell's prompt is usually where the cursor was.
            f"\ndetached from {handle.command_id}; re-attach with: "
            f"hutch sandbox shell {name} --attach {handle.command_id}",
            err=True,
        )
        return 0
    return code


@sandbox_app.command("shell")
def sandbox_shell(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The sandbox"),
    command: str = typer.Option(
        DEFAULT_SHELL,
        "--command",
        "-c",
        help="What to run [default: bash, else sh]",
        show_default=False,
    ),
    attach: str | None = typer.Option(
        None, "--attach", help="Re-attach to the shell with this command id (after Ctrl-])"
    ),
    idle_timeout: str = typer.Option(
        "1h",
        "--idle-timeout",
        help="How long a detached shell lives with no client (0: until the sandbox stops)",
    ),
) -> None:
    """An interactive shell in a sandbox (a pseudo-terminal); Ctrl-] detaches.

    Detaching leaves the shell running and prints the id to give --attach; the shell's exit
    code becomes this one's.
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        fail("shell needs a terminal on stdin and stdout; use `hutch sandbox exec` in scripts", 2)
    idle = parse_duration(idle_timeout, "--idle-timeout")
    with errors():
        code = asyncio.run(_shell(conn(ctx), name, command, attach, idle or None))
    raise typer.Exit(code)
