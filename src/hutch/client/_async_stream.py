"""Streaming command execution over the WebSocket ``/execute/ws`` (spec §4): command handles.

Written by hand. ``scripts/gen_sync.py`` generates the sync twin (``_sync_stream.py``) from this
file: keep every async-only name in that script's replacement table, and run it after editing.

``websockets`` is an optional dependency (the ``hutch[ws]`` extra). It is imported only when a
command is streamed, so ``import hutch`` works without it and ``run()`` falls back to HTTP.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from hutch.client import _backend
from hutch.client._async_ws_open import open_websocket
from hutch.client._errors import (
    CommandTimeoutError,
    SandboxAPIError,
    SandboxClientError,
    SandboxConnectionError,
    SandboxOperationError,
)
from hutch.client._models import ExecutionResult, OutputChunk
from hutch.client._ws_open import Settings, backoff, websocket_url
from hutch.protocol._exec import (
    ClientMessage,
    CloseStdin,
    Error,
    ExecProtocolError,
    Execute,
    Exit,
    Input,
    Kill,
    OffsetTracker,
    Output,
    Reconnect,
    Resize,
    ServerMessage,
    Started,
    encode_client_message,
    parse_server_message,
)

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

logger = logging.getLogger("hutch.client")

#: The text of the ImportError raised when streaming is asked for without ``websockets``.
WEBSOCKETS_REQUIRED = (
    "WebSocket-based execution requires the 'websockets' package (>= 15); install it with "
    "pip install 'hutch[ws]', or call run() with wait=True and no callbacks to use HTTP"
)

# Connection settings (spec §4.1). An incoming message may be up to 16 MiB: far above the 64 KiB
# chunks servers send, and above langsmith's 1 MiB, so a generous server is not cut off.
_OPEN_TIMEOUT = 30.0
_PING_INTERVAL = 30.0
_PING_TIMEOUT = 60.0
_CLOSE_TIMEOUT = 10.0
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Closing a connection we are done with. After exit or error the server closes first, so this
# wait is short; kill() does not wait at all (spec §4.4).
_DONE_CLOSE_TIMEOUT = 1.0

OutputCallback = Callable[[str], Any]


async def _close(ws: ClientConnection, timeout: float) -> None:
    """Close ``ws``, waiting at most ``timeout`` seconds for the server's close frame."""
    ws.close_timeout = timeout
    await ws.close()


def _protocol_error(exc: ExecProtocolError) -> SandboxAPIError:
    return SandboxAPIError(
        f"The sandbox server sent an invalid /execute/ws message ({exc}); is the data plane a "
        "hutch server, and are client and server versions compatible?"
    )


def _wire_type(msg: ServerMessage) -> str:
    if isinstance(msg, Output):
        return msg.stream
    return {Started: "started", Exit: "exit", Error: "error"}[type(msg)]


def _command_error(
    msg: Error, *, reconnect_of: str | None, timeout: int | None
) -> SandboxClientError:
    """The SDK exception for an ``error`` message (spec §4.5).

    ``reconnect_of`` is the command id when the stream is a reconnect (the error then concerns
    the reconnect); ``timeout`` is the command's deadline, if this client set it.
    """
    if msg.error_type == "CommandTimeout":
        return CommandTimeoutError(msg.error, timeout=timeout)
    text = msg.error
    if reconnect_of is not None and msg.error_type == "CommandNotFound":
        text = f"Command not found: {reconnect_of}"
    elif reconnect_of is not None and msg.error_type == "SessionExpired":
        text = f"Session expired: {reconnect_of}"
    operation = "command" if reconnect_of is None else "reconnect"
    return SandboxOperationError(text, operation=operation, error_type=msg.error_type)


#: Messages the websockets library may hold before we read them (each ≤ 64 KiB of output).
_MAX_QUEUE = 4
#: Kernel receive buffer of an exec socket. Fixing it (instead of letting TCP autotune it to
#: tens of MiB) bounds how much output can be in flight when a connection dies: the server keeps
#: ~15 MiB of sent output for replays, and a reconnect must find everything it did not get.
_RECEIVE_BUFFER = 1 << 20
_SETTINGS = Settings(
    missing=WEBSOCKETS_REQUIRED,
    refused="WebSocket upgrade rejected by server",
    unreachable="Failed to connect to sandbox",
    open_timeout=_OPEN_TIMEOUT,
    close_timeout=_CLOSE_TIMEOUT,
    ping_interval=_PING_INTERVAL,
    ping_timeout=_PING_TIMEOUT,
    max_size=_MAX_MESSAGE_BYTES,
    max_queue=_MAX_QUEUE,
    receive_buffer=_RECEIVE_BUFFER,
)


def ws_url(dataplane_url: str) -> str:
    """The exec WebSocket URL of a data plane (spec §3.1, §4.1)."""
    return websocket_url(dataplane_url, "/execute/ws")


class ExecEndpoint:
    """Opens exec WebSockets to one sandbox: URL, upgrade headers, and the backoff sleep."""

    def __init__(
        self, dataplane_url: str, headers: Mapping[str, str], sleep: _backend.AsyncSleep
    ) -> None:
        self.url = ws_url(dataplane_url)
        self.headers = dict(headers)
        self.sleep = sleep

    async def open(self) -> ClientConnection:
        """Open a connection (spec §4.1); nothing has been sent on it yet.

        Raises:
            ImportError: ``websockets`` is not installed.
            SandboxConnectionError: The upgrade was refused or the server could not be reached.
        """
        return await open_websocket(
            self.url,
            self.headers,
            _SETTINGS,
            not_found=(
                "The sandbox server does not support WebSocket command execution (endpoint "
                f"{self.url} returned 404); update the server, or call run() with "
                "wait=True and no callbacks to execute over HTTP"
            ),
        )

    async def resume(self, request: Reconnect) -> ClientConnection:
        """Open a connection and send ``request`` on it.

        Raises:
            SandboxConnectionError: As :meth:`open`, or the connection closed at once.
        """
        ws = await self.open()  # first: it turns a missing websockets into the helpful ImportError
        from websockets.exceptions import ConnectionClosed

        try:
            await ws.send(encode_client_message(request))
        except ConnectionClosed as exc:
            raise SandboxConnectionError(
                f"WebSocket connection closed unexpectedly: {exc}"
            ) from exc
        return ws

    async def start(self, ws: ClientConnection, execute: Execute) -> Started:
        """Send ``execute`` on the new connection ``ws`` and wait for ``started`` (spec §4.3).

        Closes ``ws`` on any failure.

        Raises:
            CommandTimeoutError, SandboxOperationError: The server refused the command.
            SandboxConnectionError: The connection broke after the command was sent; it may or
                may not be running.
        """
        from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

        timeout = execute.timeout_seconds or None
        try:
            await ws.send(encode_client_message(execute))
            while True:
                msg = parse_server_message(await ws.recv())
                if isinstance(msg, Started):
                    return msg
                if isinstance(msg, Error):
                    raise _command_error(msg, reconnect_of=None, timeout=timeout)
                if msg is not None:
                    raise SandboxOperationError(
                        f"Expected 'started' message, got '{_wire_type(msg)}'", operation="command"
                    )
        except ConnectionClosedOK as exc:
            await _close(ws, 0)
            raise SandboxOperationError(
                "Command stream ended before 'started' message", operation="command"
            ) from exc
        except ConnectionClosed as exc:
            await _close(ws, 0)
            raise SandboxConnectionError(
                f"WebSocket connection closed unexpectedly before the command started ({exc}); "
                "it may or may not be running"
            ) from exc
        except ExecProtocolError as exc:
            await _close(ws, 0)
            raise _protocol_error(exc) from exc
        except BaseException:
            await _close(ws, 0)
            raise


class _State(enum.Enum):
    """Where a handle is. Terminal: ``EXITED``, ``FAILED``."""

    RUNNING = "running"  # attached: a live connection streams the command's output
    DETACHED = "detached"  # no connection (lost or closed); iterating re-attaches
    EXITED = "exited"  # 'exit' arrived: the result is known
    FAILED = "failed"  # an error ended the stream: server error, kill, or too many losses


_TRANSITIONS: dict[_State, frozenset[_State]] = {
    _State.RUNNING: frozenset({_State.DETACHED, _State.EXITED, _State.FAILED}),
    # DETACHED -> EXITED: close() raced with the exit message arriving.
    _State.DETACHED: frozenset({_State.RUNNING, _State.EXITED, _State.FAILED}),
    _State.EXITED: frozenset(),
    _State.FAILED: frozenset(),
}


class AsyncCommandHandle:
    """A command running in a sandbox, its output streamed over a WebSocket (spec §4.6).

    Returned by ``await sb.run(..., wait=False)`` (once the server confirmed the start) and
    ``await sb.reconnect(command_id)``; not constructed directly. Example::

        handle = await sb.run("make build", timeout=600, wait=False)
        async for chunk in handle:
            print(chunk.data, end="")
        result = await handle.result

    Iterating yields each :class:`OutputChunk` once, stdout and stderr in arrival order, and
    stops when the command exits. Breaking out and iterating again continues where it stopped.
    Iterate from one task (or thread) at a time; :meth:`send_input` and :meth:`kill` may be
    called from another while it waits for output.

    If the connection is lost, or the server closes it before the command's exit, the handle
    opens a new one and resumes at the byte offsets it has: after 0.5 s, doubling up to 8 s, at
    most :attr:`MAX_AUTO_RECONNECTS` attempts in a row (each chunk received resets the count),
    never after :meth:`kill`.
    """

    #: Reconnect attempts in a row before iteration gives up with SandboxConnectionError.
    MAX_AUTO_RECONNECTS = 5

    def __init__(
        self,
        endpoint: ExecEndpoint,
        ws: ClientConnection,
        *,
        command_id: str,
        pid: int | None = None,
        stdout_offset: int = 0,
        stderr_offset: int = 0,
        resumed: bool,
        timeout: int | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        keep_output: bool = True,
    ) -> None:
        self._endpoint = endpoint
        self._ws: ClientConnection | None = ws
        self._command_id = command_id
        self._pid = pid
        self._tracker = OffsetTracker(stdout_offset, stderr_offset)
        # True once the stream is a reconnect (errors then concern the reconnect, spec §4.5).
        self._resumed = resumed
        self._timeout = timeout
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._state = _State.RUNNING
        # Everything received, for the result; None: not kept (``keep_output=False``).
        self._stdout: list[str] | None = [] if keep_output else None
        self._stderr: list[str] | None = [] if keep_output else None
        self._result: ExecutionResult | None = None
        self._failure: SandboxClientError | None = None
        self._killed = False
        # Consecutive connection losses, and the last one's cause (spec §4.7).
        self._losses = 0
        self._last_loss: BaseException | None = None
        # Serialises opening connections and sending, between the iterating task and others.
        self._lock = asyncio.Lock()

    @classmethod
    async def _start(
        cls,
        endpoint: ExecEndpoint,
        ws: ClientConnection,
        execute: Execute,
        *,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        keep_output: bool = True,
    ) -> AsyncCommandHandle:
        """Start ``execute`` on the new connection ``ws``; returns once the server confirmed."""
        started = await endpoint.start(ws, execute)
        return cls(
            endpoint,
            ws,
            command_id=started.command_id,
            pid=started.pid,
            resumed=False,
            timeout=execute.timeout_seconds or None,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            keep_output=keep_output,
        )

    @classmethod
    async def _reconnect(
        cls, endpoint: ExecEndpoint, request: Reconnect, *, keep_output: bool = True
    ) -> AsyncCommandHandle:
        """Attach to a command by id, resuming at the offsets of ``request``."""
        ws = await endpoint.resume(request)
        return cls(
            endpoint,
            ws,
            command_id=request.command_id,
            stdout_offset=request.stdout_offset,
            stderr_offset=request.stderr_offset,
            resumed=True,
            keep_output=keep_output,
        )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} command_id={self._command_id!r} pid={self._pid} "
            f"state={self._state.value}>"
        )

    # -- Public surface ------------------------------------------------------------------------

    @property
    def command_id(self) -> str:
        """The command's id (give it to ``reconnect()``)."""
        return self._command_id

    @property
    def pid(self) -> int | None:
        """The command's process id in the sandbox, if the server said."""
        return self._pid

    @property
    def last_stdout_offset(self) -> int:
        """Bytes of stdout received so far (where a reconnect resumes)."""
        return self._tracker.stdout

    @property
    def last_stderr_offset(self) -> int:
        """Bytes of stderr received so far (where a reconnect resumes)."""
        return self._tracker.stderr

    @property
    async def result(self) -> ExecutionResult:
        """The command's result: ``await handle.result`` reads the rest of its output first.

        ``stdout`` and ``stderr`` hold all the output this handle received, in arrival order.

        Raises:
            CommandTimeoutError: The command exceeded its timeout.
            SandboxOperationError: The server reported an error (e.g. ``CommandNotFound``).
            SandboxConnectionError: The connection was lost for good, or :meth:`kill` closed it.
        """
        async for _ in self:
            pass
        if self._result is None:  # unreachable: iteration ends only at exit
            raise SandboxOperationError(
                "Command stream ended without exit message", operation="command"
            )
        return self._result

    def __aiter__(self) -> AsyncCommandHandle:
        return self

    async def __anext__(self) -> OutputChunk:
        while True:
            if self._state is _State.EXITED:
                raise StopAsyncIteration
            if self._failure is not None:
                raise self._failure
            ws = self._ws
            if ws is None:
                await self._resume()
                continue
            chunk = await self._receive(ws)
            if chunk is not None:
                return chunk

    async def send_input(self, data: str) -> None:
        """Write ``data`` (UTF-8) to the command's stdin, or type it into its PTY.

        Raises:
            SandboxOperationError: The command has exited, failed or was killed.
            SandboxConnectionError: The connection is down; it may not have arrived.
        """
        await self._send(Input(data), "send input")

    async def close_stdin(self) -> None:
        """Close the command's stdin, so it reads end-of-file (a hutch extension).

        Raises:
            SandboxOperationError: The command has exited, failed or was killed.
            SandboxConnectionError: The connection is down; it may not have arrived.
        """
        await self._send(CloseStdin(), "close stdin")

    async def resize(self, rows: int, cols: int) -> None:
        """Set the size of the command's PTY (a hutch extension; only for ``pty=True``).

        Raises:
            ValueError: ``rows`` or ``cols`` is not between 1 and 65535.
            SandboxOperationError: The command has exited, failed or was killed.
            SandboxConnectionError: The connection is down; it may not have arrived.
        """
        await self._send(Resize(rows, cols), "resize")  # Resize() checks the bounds

    async def kill(self) -> None:
        """SIGKILL the command's whole process group, then drop the connection (spec §4.4).

        Iterating afterwards raises :class:`SandboxConnectionError` without reconnecting; a later
        ``reconnect(command_id)`` reports the exit code (137). No effect once the command has
        exited, or after a kill() that went through.

        Raises:
            SandboxConnectionError: The connection was down and could not be re-opened.
        """
        from websockets.exceptions import ConnectionClosed

        kill = encode_client_message(Kill())
        async with self._lock:
            if self._killed or self._state in (_State.EXITED, _State.FAILED):
                return
            ws = self._ws
            if ws is not None:
                try:
                    await ws.send(kill)
                except ConnectionClosed:
                    ws = None  # it died meanwhile: deliver the kill on a new connection
            if ws is None:
                ws = await self._endpoint.resume(self._resume_request())
                try:
                    await ws.send(kill)
                except ConnectionClosed as exc:
                    raise SandboxConnectionError(
                        f"Could not deliver kill to command {self._command_id!r}: {exc}"
                    ) from exc
            # Before closing: the iterating side must see the closed connection as a kill.
            self._killed = True
            await _close(ws, 0)

    async def reconnect(self) -> AsyncCommandHandle:
        """A new handle on this command, resuming at this handle's offsets.

        Raises:
            SandboxConnectionError: The connection could not be opened.
        """
        return await type(self)._reconnect(self._endpoint, self._resume_request())

    async def aclose(self) -> None:
        """Close the connection without killing the command (a hutch extension).

        The command goes on as ``idle_timeout`` and ``kill_on_disconnect`` say; iterating again
        re-attaches. Idempotent.
        """
        async with self._lock:
            ws = self._ws
            if ws is None:
                return
            self._ws = None
            if self._state is _State.RUNNING:
                self._move(_State.DETACHED)
        await _close(ws, _DONE_CLOSE_TIMEOUT)

    # -- Internals -----------------------------------------------------------------------------

    def _move(self, new: _State) -> None:
        if new not in _TRANSITIONS[self._state]:
            expected = ", ".join(sorted(s.value for s in _TRANSITIONS[self._state])) or "none"
            raise RuntimeError(
                f"command handle cannot go from {self._state.value} to {new.value} "
                f"(allowed: {expected})"
            )
        self._state = new

    def _resume_request(self) -> Reconnect:
        return Reconnect(self._command_id, self._tracker.stdout, self._tracker.stderr)

    def _killed_error(self) -> SandboxConnectionError:
        return SandboxConnectionError(
            f"Command {self._command_id!r} was killed and its connection closed; "
            f"reconnect('{self._command_id}') reports its exit code"
        )

    async def _fail(self, error: SandboxClientError) -> SandboxClientError:
        """Enter FAILED with ``error`` (re-raised by later calls); returns it for ``raise``."""
        self._move(_State.FAILED)
        self._failure = error
        ws, self._ws = self._ws, None
        if ws is not None:
            await _close(ws, 0)
        return error

    async def _receive(self, ws: ClientConnection) -> OutputChunk | None:
        """Read one message; returns the chunk to yield, if it was new output."""
        from websockets.exceptions import ConnectionClosed

        try:
            raw = await ws.recv()
        except ConnectionClosed as exc:
            await self._lost(ws, exc)
            return None
        try:
            msg = parse_server_message(raw)
        except ExecProtocolError as exc:
            raise (await self._fail(_protocol_error(exc))) from exc
        if isinstance(msg, Output):
            self._losses = 0
            # Its traceback holds this handle's frames: keeping it would make a reference cycle
            # that keeps all received output alive until a full garbage collection.
            self._last_loss = None
            accepted = self._tracker.accept(msg.stream, msg.data, msg.offset)
            if accepted is None:
                logger.debug("command %s: dropped output already received", self._command_id)
                return None
            data, offset = accepted
            kept = self._stdout if msg.stream == "stdout" else self._stderr
            if kept is not None:
                kept.append(data)
            callback = self._on_stdout if msg.stream == "stdout" else self._on_stderr
            if callback is not None:
                callback(data)
            return OutputChunk(stream=msg.stream, data=data, offset=offset)
        if isinstance(msg, Started):
            # On a reconnect stream: the server's attach acknowledgement (spec §9.1).
            self._losses = 0
            self._last_loss = None
            if msg.pid is not None:
                self._pid = msg.pid
        elif isinstance(msg, Exit):
            self._result = ExecutionResult(
                stdout="".join(self._stdout or ()),
                stderr="".join(self._stderr or ()),
                exit_code=msg.exit_code,
            )
            if self._ws is ws:
                self._ws = None
            self._move(_State.EXITED)
            await _close(ws, _DONE_CLOSE_TIMEOUT)
        elif isinstance(msg, Error):
            reconnect_of = self._command_id if self._resumed else None
            raise await self._fail(
                _command_error(msg, reconnect_of=reconnect_of, timeout=self._timeout)
            )
        return None

    async def _lost(self, ws: ClientConnection, exc: BaseException) -> None:
        """The connection ``ws`` closed before the command's exit."""
        if self._killed:
            raise (await self._fail(self._killed_error())) from exc
        if self._ws is not ws:
            return  # closed on purpose (close()), or already counted by _send()
        self._ws = None
        self._move(_State.DETACHED)
        self._losses += 1
        self._last_loss = exc
        logger.debug("command %s: connection lost (%s)", self._command_id, exc)

    async def _resume(self) -> None:
        """Re-attach after a loss (with backoff) or a close(); counts failed attempts."""
        if self._losses > self.MAX_AUTO_RECONNECTS:
            error = SandboxConnectionError(
                f"Lost connection {self._losses} times in succession, giving up"
            )
            raise (await self._fail(error)) from self._last_loss
        if self._losses:
            await self._endpoint.sleep(backoff(self._losses))
        async with self._lock:
            if self._killed:
                raise await self._fail(self._killed_error())
            if self._ws is not None or self._state is not _State.DETACHED:
                return  # re-attached meanwhile by send_input()
            try:
                ws = await self._endpoint.resume(self._resume_request())
            except SandboxConnectionError as exc:
                self._losses += 1
                self._last_loss = exc
                logger.debug("command %s: reconnect failed (%s)", self._command_id, exc)
                return
            self._ws = ws
            self._resumed = True
            self._move(_State.RUNNING)

    async def _send(self, msg: ClientMessage, what: str) -> None:
        from websockets.exceptions import ConnectionClosed

        async with self._lock:
            if self._killed or self._state in (_State.EXITED, _State.FAILED):
                state = "killed" if self._killed else self._state.value
                raise SandboxOperationError(
                    f"Cannot {what}: command {self._command_id!r} is {state} "
                    "(that needs it running)",
                    operation="command",
                )
            ws = self._ws
            if ws is None:
                ws = await self._endpoint.resume(self._resume_request())
                self._ws = ws
                self._resumed = True
                self._move(_State.RUNNING)
            try:
                await ws.send(encode_client_message(msg))
            except ConnectionClosed as exc:
                if self._ws is ws:
                    self._ws = None
                    self._move(_State.DETACHED)
                    self._losses += 1
                    self._last_loss = exc
                raise SandboxConnectionError(
                    f"Could not {what}: the connection to command {self._command_id!r} closed "
                    f"({exc}), so it may not have arrived; iterating the handle reconnects"
                ) from exc
