"""One command session: a spawned :class:`~hutch.runtime._interface.Process` and its output log.

The session outlives any client connection (spec §4.7). It reads the process's pipes into a
bounded :class:`~hutch.sessions._log.OutputLog`; any number of :class:`Subscription` s read the
log through cursors. Timers (timeout, idle timeout, TTL after exit) go through an injected
:class:`~hutch.sessions._clock.Clock` and only *request* actions; the session's one task does
all the asynchronous work:

* ``_run`` (owned by the session; awaited by :meth:`CommandSession.aclose`) lives until the
  session expires. It runs ``_io`` (one pump per stream plus a watcher that reaps the process
  and carries out kill requests) and, on the way out, releases the process.

Memory per session is the log's ``capacity`` plus what the process's ``StreamReader`` s buffer
ahead (asyncio pauses a pipe once a reader holds twice its ``limit``). While the log is full of
undelivered output the pumps stop reading, so the kernel pipe fills and the command blocks in
``write`` until a client reads: backpressure instead of loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol, runtime_checkable

from hutch.runtime._interface import Process
from hutch.sessions._clock import AsyncioClock, Clock, TimerHandle
from hutch.sessions._errors import (
    InvalidSessionState,
    SessionExpired,
    SlowConsumer,
    StdinClosed,
)
from hutch.sessions._log import DEFAULT_CAPACITY, MAX_EVENT_BYTES, Behind, Cursor, OutputLog
from hutch.sessions._types import (
    STREAMS,
    Error,
    Event,
    Exit,
    Output,
    RawOutput,
    SessionOptions,
    SessionState,
    Stream,
    Terminal,
)
from hutch.sessions._utf8 import Utf8Splitter, decode

log = logging.getLogger("hutch.sessions")

#: After the process exits, each stream gets this much *waiting* time (seconds, real time: it is
#: about the OS, not policy; time blocked by backpressure does not count) and
#: ``DRAIN_MAX_BYTES`` more bytes before it counts as ended. Background children
#: (``sleep 300 &``, or a loop that keeps printing) may hold the pipe open forever; what they
#: write after the command exits is not the command's output. Everything the command itself
#: wrote is already in the pipe (at most its capacity) or the reader's buffer (bounded by its
#: limit) when it exits, which the byte allowance covers.
DRAIN_GRACE = 0.2
DRAIN_MAX_BYTES = 4 * 1024 * 1024

_RUNNING = SessionState.RUNNING
_EXITED = SessionState.EXITED
_EXPIRED = SessionState.EXPIRED
_TRANSITIONS = {_RUNNING: _EXITED, _EXITED: _EXPIRED}


@runtime_checkable
class SupportsDetach(Protocol):
    """A process that can outlive this server: :meth:`detach` lets go of it without ending it
    (a later server takes it over)."""

    async def detach(self) -> None: ...


@runtime_checkable
class SupportsResize(Protocol):
    """A process with a terminal (PTY) whose size can change."""

    def resize(self, rows: int, cols: int) -> None: ...


class _Signal:
    """Wakes every current waiter. Each generation is a fresh ``asyncio.Event``, whose waiters
    each await their own future, so one waiter being cancelled never affects the others.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


def _timeout_message(seconds: float) -> str:
    return f"Command timed out after {seconds:g} seconds"


class CommandSession:
    """A running or finished command whose output can be replayed from byte offsets.

    Created by :class:`~hutch.sessions.SessionManager`; all methods must be called on the event
    loop that created it.
    """

    def __init__(
        self,
        command_id: str,
        owner: str,
        process: Process,
        options: SessionOptions,
        *,
        clock: Clock | None = None,
        log_capacity: int = DEFAULT_CAPACITY,
        max_event_bytes: int = MAX_EVENT_BYTES,
        drain_grace: float = DRAIN_GRACE,
        on_expired: Callable[[CommandSession], None] | None = None,
        on_exited: Callable[[CommandSession], None] | None = None,
        history: Mapping[Stream, tuple[int, bytes]] | None = None,
    ) -> None:
        """``history`` (per stream: start offset and bytes) restores the output a command
        taken over from an earlier server had before; its process continues right after it."""
        self.command_id = command_id
        self.owner = owner
        self.options = options
        self.created_at = datetime.now(UTC)
        self._process = process
        self._clock: Clock = clock or AsyncioClock()
        self._max_event_bytes = max_event_bytes
        self._drain_grace = drain_grace
        #: Per stream, after exit: (waiting seconds, bytes) still allowed before it ends.
        self._drain_left: dict[Stream, tuple[float, int]] = {}
        self._on_expired = on_expired
        self._on_exited = on_exited
        self._log = OutputLog(log_capacity)
        self._splitters: dict[Stream, Utf8Splitter] = {s: Utf8Splitter() for s in STREAMS}
        for stream, (start, data) in (history or {}).items():
            # An unfinished character at the end waits for its rest, as in _pump.
            self._log.restore(stream, start, self._splitters[stream].feed(data))
        self._abandoning = False
        self._readers: dict[Stream, asyncio.StreamReader] = {"stdout": process.stdout}
        if process.stderr is not None:
            self._readers["stderr"] = process.stderr
        # A PTY has no stderr: that stream is empty and ended from the start.
        self._ended: dict[Stream, bool] = {s: s not in self._readers for s in STREAMS}
        self._paused: dict[Stream, bool] = dict.fromkeys(STREAMS, False)
        self._reading: dict[Stream, asyncio.Timeout | None] = dict.fromkeys(STREAMS)
        self._state = _RUNNING
        self._exit_code: int | None = None
        self._timed_out = False
        self._failure: Error | None = None
        self._subscribers: set[Subscription] = set()
        self._expire_on_detach = False
        self._data = _Signal()  # output appended, a stream ended, exit, expiry
        self._space = _Signal()  # deliveries: the log may be able to make room
        self._kill_requested = asyncio.Event()
        self._exited = asyncio.Event()
        self._stop = asyncio.Event()  # expiry: wind the I/O down
        self._stdin_closed = process.stdin is None
        self._stdin_lock = asyncio.Lock()
        self._timeout_timer: TimerHandle | None = None
        self._idle_timer: TimerHandle | None = None
        self._ttl_timer: TimerHandle | None = None
        if options.timeout is not None:
            self._timeout_timer = self._clock.call_later(options.timeout, self._on_timeout)
        self._arm_idle()  # nobody is attached yet
        self._task = asyncio.create_task(self._run(), name=f"command-session-{command_id}")

    # -- what a UI lists -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The process id the runtime reports (0 when unknown)."""
        return self._process.pid

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def running(self) -> bool:
        return self._state is _RUNNING

    @property
    def exit_code(self) -> int | None:
        """The process's real exit code once it exited (137 after a kill or a timeout)."""
        return self._exit_code

    @property
    def timed_out(self) -> bool:
        return self._timed_out

    @property
    def stdout_bytes(self) -> int:
        return self._log.total["stdout"]

    @property
    def stderr_bytes(self) -> int:
        return self._log.total["stderr"]

    @property
    def log_bytes(self) -> int:
        """Bytes of memory its output log holds now (at most its capacity)."""
        return self._log.used

    @property
    def retained_from(self) -> tuple[int, int]:
        """Offsets ``(stdout, stderr)`` of the oldest bytes still in the log."""
        return self._log.retained_from["stdout"], self._log.retained_from["stderr"]

    @property
    def paused(self) -> bool:
        """Reading is paused because undelivered output fills the log (backpressure)."""
        return any(self._paused.values())

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def terminal(self) -> Terminal | None:
        """The terminal event, once the exit is known *and* all output is in the log."""
        if self._exit_code is None or not all(self._ended.values()):
            return None
        if self._failure is not None:
            return self._failure
        if self._timed_out:
            assert self.options.timeout is not None
            return Error("CommandTimeout", _timeout_message(self.options.timeout))
        return Exit(self._exit_code)

    # -- clients -------------------------------------------------------------------------------

    def attach(self, stdout_offset: int = 0, stderr_offset: int = 0) -> Subscription:
        """Subscribe from byte offsets (see :class:`Subscription`); cancels the idle timer.

        Raises :class:`SessionExpired` once the session expired.
        """
        if self._state is _EXPIRED:
            raise SessionExpired(self.command_id)
        cursor = Cursor(self._log, stdout_offset, stderr_offset, self._max_event_bytes)
        sub = Subscription(self, cursor)
        self._subscribers.add(sub)
        self._cancel_idle()
        return sub

    def _detach(self, sub: Subscription) -> None:
        if sub not in self._subscribers:
            return
        self._subscribers.discard(sub)
        if self._subscribers or self._abandoning:
            return  # (the server going is no client's disconnect: the command goes on)
        if self._state is _RUNNING:
            if self.options.kill_on_disconnect:
                self._kill_requested.set()
            else:
                self._arm_idle()
        elif self._expire_on_detach and self._state is _EXITED:
            self._expire()

    async def wait(self) -> int:
        """The exit code, once the process has exited (output may still be draining)."""
        await self._exited.wait()
        assert self._exit_code is not None
        return self._exit_code

    async def kill(self) -> None:
        """Kill the whole process tree and wait until it is reaped (exit code 137).

        A no-op once the command exited; raises :class:`InvalidSessionState` once expired.
        """
        self._require("kill the command", _RUNNING, _EXITED)
        self._kill_requested.set()
        await self._exited.wait()

    async def write_stdin(self, data: bytes) -> None:
        """Write to the command's stdin (or its PTY), waiting while the pipe is full.

        Raises :class:`InvalidSessionState` after the command exited and :class:`StdinClosed`
        after :meth:`close_stdin` (or when the command closed its end).
        """
        self._require("write to stdin", _RUNNING)
        stdin = self._process.stdin
        async with self._stdin_lock:  # keeps concurrent writers' data in order
            if stdin is None or self._stdin_closed:
                raise StdinClosed(f"stdin of command {self.command_id} is closed")
            try:
                stdin.write(data)
                await stdin.drain()
            except ConnectionError as exc:  # BrokenPipeError, ConnectionResetError
                self._stdin_closed = True
                raise StdinClosed(
                    f"command {self.command_id} closed its stdin; input was not delivered"
                ) from exc

    async def close_stdin(self) -> None:
        """Close stdin so the command reads EOF; idempotent."""
        self._require("close stdin", _RUNNING, _EXITED)
        stdin = self._process.stdin
        async with self._stdin_lock:
            if stdin is None or self._stdin_closed:
                return
            self._stdin_closed = True
            stdin.close()
            with contextlib.suppress(ConnectionError):
                await stdin.wait_closed()

    def resize(self, rows: int, cols: int) -> None:
        """Resize the terminal of a PTY command; a no-op for a command with pipes."""
        self._require("resize the terminal", _RUNNING)
        if rows <= 0 or cols <= 0:
            raise ValueError("rows and cols must be positive")
        if isinstance(self._process, SupportsResize):
            self._process.resize(rows, cols)

    def expire(self) -> None:
        """Forget a finished session now, before its TTL (the owner keeps too many)."""
        self._require("expire the session", _EXITED)
        self._expire()

    @property
    def closed(self) -> bool:
        """The session expired and its task finished (the process is released)."""
        return self._task.done()

    async def wait_closed(self) -> None:
        """Wait until the session's task has finished (after expiry or :meth:`aclose`)."""
        await asyncio.shield(self._task)

    @property
    def survives_restart(self) -> bool:
        return isinstance(self._process, SupportsDetach)

    async def abandon(self) -> None:
        """The server is going: let go of a process that :attr:`survives_restart` without
        ending it (its command, output and exit status stay for the next server); others are
        closed as by :meth:`aclose`."""
        if not self.survives_restart or self._state is _EXPIRED:
            await self.aclose()
            return
        self._abandoning = True
        for sub in list(self._subscribers):
            sub.close()
        self._stop.set()
        await self._task

    async def aclose(self) -> None:
        """Kill the tree if it runs, stop reading, release the process; the session expires.

        Output still in the pipes is dropped (the sandbox is going away). Attached subscribers
        get what the log holds, then the terminal event.
        """
        if self._state is _RUNNING:
            self._kill_requested.set()
            await self._exited.wait()
        if self._state is _EXITED:
            self._expire(notify_owner=False)
        await self._task

    # -- state ---------------------------------------------------------------------------------

    def _require(self, action: str, *expected: SessionState) -> None:
        if self._state not in expected:
            if self._state is _EXPIRED:
                raise SessionExpired(self.command_id)
            raise InvalidSessionState(action, self._state, expected)

    def _transition(self, new: SessionState) -> None:
        if _TRANSITIONS.get(self._state) is not new:
            expected = [old for old, nxt in _TRANSITIONS.items() if nxt is new]
            raise InvalidSessionState(f"become {new.value}", self._state, expected)
        self._state = new

    def _record_exit(self, code: int) -> None:
        if self._exit_code is not None:
            return
        self._exit_code = code
        for timer in (self._timeout_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._transition(_EXITED)
        self._exited.set()
        # Streams still being read now end once their drain allowance is used (see DRAIN_GRACE).
        deadline = asyncio.get_running_loop().time() + self._drain_grace
        for cm in self._reading.values():
            if cm is not None:
                cm.reschedule(deadline)
        if self.options.ttl is not None:
            self._ttl_timer = self._clock.call_later(self.options.ttl, self._on_ttl)
        self._data.notify()
        if self._on_exited is not None:
            self._on_exited(self)  # last: the owner may expire this session right away

    def _expire(self, notify_owner: bool = True) -> None:
        self._transition(_EXPIRED)
        if self._ttl_timer is not None:
            self._ttl_timer.cancel()
        self._stop.set()
        self._data.notify()
        self._space.notify()
        if notify_owner and self._on_expired is not None:
            self._on_expired(self)

    # -- timers (synchronous: they only request) ------------------------------------------------

    def _arm_idle(self) -> None:
        self._cancel_idle()
        if self.options.idle_timeout is not None and self._state is _RUNNING:
            self._idle_timer = self._clock.call_later(self.options.idle_timeout, self._on_idle)

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _on_timeout(self) -> None:
        if self._state is _RUNNING:
            self._timed_out = True
            self._kill_requested.set()

    def _on_idle(self) -> None:
        self._idle_timer = None
        if self._state is _RUNNING and not self._subscribers:
            log.info(
                "command %s: no client for %ss, killing it",
                self.command_id,
                self.options.idle_timeout,
            )
            self._kill_requested.set()

    def _on_ttl(self) -> None:
        self._ttl_timer = None
        if self._state is not _EXITED:
            return
        if self._subscribers:
            self._expire_on_detach = True  # let attached clients finish reading first
        else:
            self._expire()

    # -- the session's task --------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                io = tg.create_task(self._io(), name=f"command-io-{self.command_id}")
                await self._stop.wait()
                io.cancel()
        finally:
            await self._finish()

    async def _finish(self) -> None:
        """Release the process and make sure every waiter can see an end."""
        for timer in (self._timeout_timer, self._idle_timer, self._ttl_timer):
            if timer is not None:
                timer.cancel()
        if self._abandoning and isinstance(self._process, SupportsDetach):
            try:
                await self._process.detach()
            except Exception:
                log.exception("command %s: letting go of the process failed", self.command_id)
            for stream in STREAMS:
                self._ended[stream] = True
            self._state = _EXPIRED
            self._data.notify()
            return
        try:
            if self._exit_code is None:
                await self._process.kill()
            await self._process.close()
            if self._exit_code is None:
                self._record_exit(await self._process.wait())
        except Exception:
            log.exception("command %s: releasing the process failed", self.command_id)
            if self._exit_code is None:
                self._failure = Error("CommandError", "The command could not be stopped")
                self._record_exit(-1)
        for stream in STREAMS:
            self._ended[stream] = True
        if self._state is _EXITED:
            self._expire()
        self._data.notify()

    async def _io(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for stream, reader in self._readers.items():
                    tg.create_task(self._pump(stream, reader), name=f"command-{stream}")
                tg.create_task(self._watch(), name="command-watch")
        except Exception as exc:
            log.error("command %s: reading its output failed", self.command_id, exc_info=exc)
            self._failure = Error("CommandError", f"Reading the command's output failed: {exc}")
            for stream in STREAMS:
                self._ended[stream] = True
            if self._exit_code is None:
                try:
                    await self._process.kill()
                    code = await self._process.wait()
                except Exception:
                    log.exception("command %s: could not be stopped", self.command_id)
                    code = -1
                self._record_exit(code)
            self._data.notify()

    async def _watch(self) -> None:
        """Reap the process; carry out a kill request (timeout, idle, disconnect, kill())."""
        reap = asyncio.create_task(self._process.wait(), name="command-reap")
        killed = asyncio.create_task(self._kill_requested.wait(), name="command-kill-request")
        try:
            done, _ = await asyncio.wait({reap, killed}, return_when=asyncio.FIRST_COMPLETED)
            if reap not in done:
                await self._process.kill()
            code = await reap
        finally:
            for task in (reap, killed):
                task.cancel()
            await asyncio.gather(reap, killed, return_exceptions=True)
        self._record_exit(code)

    async def _pump(self, stream: Stream, reader: asyncio.StreamReader) -> None:
        splitter = self._splitters[stream]
        while True:
            budget = await self._reserve(stream)
            try:
                data = await self._read(stream, reader, OutputLog.read_size(budget))
            finally:
                self._log.release(budget)
            if not data:
                break
            self._append(stream, splitter.feed(data))
        rest = splitter.flush()
        if rest:
            self._log.release(await self._reserve(stream))
            self._append(stream, rest)
        self._ended[stream] = True
        self._data.notify()

    async def _reserve(self, stream: Stream) -> int:
        """Wait until the log has room for a read of ``stream`` and reserve it."""
        while not (budget := self._log.read_budget()):
            # The log is full of output no client has received: stop reading, so the pipe
            # fills and the writer blocks. A delivery (a subscriber pulling) wakes us.
            self._paused[stream] = True
            try:
                await self._space.wait()
            finally:
                self._paused[stream] = False
        self._log.reserve(budget)
        return budget

    async def _read(self, stream: Stream, reader: asyncio.StreamReader, n: int) -> bytes:
        """Read up to ``n`` bytes; ``b""`` at EOF, or once the post-exit drain allowance of
        waiting time and bytes (see ``DRAIN_GRACE``) is used up."""
        loop = asyncio.get_running_loop()
        deadline = None
        draining = self._exit_code is not None
        if draining:
            left_time, left_bytes = self._drain_left.setdefault(
                stream, (self._drain_grace, DRAIN_MAX_BYTES)
            )
            if left_time <= 0 or left_bytes <= 0:
                return b""
            n = min(n, left_bytes)
            deadline = loop.time() + left_time
        started = loop.time()
        try:
            async with asyncio.timeout(deadline) as cm:
                self._reading[stream] = cm
                try:
                    data = await reader.read(n)
                finally:
                    self._reading[stream] = None
        except TimeoutError:
            if cm.expired():
                return b""
            raise
        except OSError as exc:
            if exc.errno == errno.EIO:  # a PTY whose other side closed: Linux says EIO
                return b""
            raise
        if draining or self._exit_code is not None:
            left_time, left_bytes = self._drain_left.get(
                stream, (self._drain_grace, DRAIN_MAX_BYTES)
            )
            waited = loop.time() - started if draining else 0.0
            self._drain_left[stream] = (left_time - waited, left_bytes - len(data))
        return data

    def _append(self, stream: Stream, data: bytes) -> None:
        if data:
            self._log.append(stream, data)
            self._data.notify()
        self._space.notify()  # our reservation was released


class Subscription:
    """One client's view of a session: an async iterator of events in arrival order.

    Yields :class:`~hutch.sessions.Output` events, then exactly one terminal event
    (:class:`~hutch.sessions.Exit` or :class:`~hutch.sessions.Error`), then stops (and
    detaches itself). Use it as a context manager so it always detaches::

        with session.attach(stdout_offset, stderr_offset) as sub:
            async for event in sub:
                await send(event)

    **Delivery (no silent loss):** an output event counts as delivered to a client when the
    consumer asks for the next event (it awaited its send before pulling again) or calls
    :meth:`ack`. Only delivered output may be dropped from the log; the event in flight when a
    consumer stops is not delivered, so it stays for a re-attach.

    A subscriber that falls so far behind that output it had not received was dropped (after
    another client got it) raises :class:`~hutch.sessions.SlowConsumer` and is detached; it
    may re-attach from :attr:`offsets`.
    """

    def __init__(self, session: CommandSession, cursor: Cursor) -> None:
        self._session = session
        self._cursor = cursor
        self._closed = False

    @property
    def offsets(self) -> tuple[int, int]:
        """``(stdout_offset, stderr_offset)`` after the last event handed out."""
        return self._cursor.offsets

    @property
    def closed(self) -> bool:
        return self._closed

    def ack(self) -> None:
        """Mark the output event handed out last as delivered (before pulling the next one)."""
        if self._cursor.ack():
            self._session._space.notify()

    def close(self) -> None:
        """Detach; idempotent. May start the idle timer or kill (``kill_on_disconnect``)."""
        if not self._closed:
            self._closed = True
            self._session._detach(self)
            self._session._data.notify()  # a consumer waiting in __anext__ sees the close

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        event = await self.next_raw()
        if event is None:
            raise StopAsyncIteration
        if isinstance(event, RawOutput):
            return Output(event.stream, decode(event.data), event.offset)
        return event

    async def next_raw(self) -> RawOutput | Terminal | None:
        """The next event as iteration yields it, but with output as the raw bytes the command
        wrote (for byte transports: invalid UTF-8 is not replaced); ``None`` once detached.

        Same delivery rule, terminal event and :class:`~hutch.sessions.SlowConsumer` as
        iterating. Cancelling a pending call loses nothing: output is handed out only when the
        call returns.
        """
        session = self._session
        log_ = session._log
        while not self._closed:
            delivered = log_.delivered["stdout"] + log_.delivered["stderr"]
            try:
                output = self._cursor.next_raw()
            except Behind:
                self.close()
                stdout_offset, stderr_offset = self._cursor.offsets
                raise SlowConsumer(session.command_id, stdout_offset, stderr_offset) from None
            finally:
                if log_.delivered["stdout"] + log_.delivered["stderr"] != delivered:
                    session._space.notify()  # a reader waiting for room may go on
            if output is not None:
                return output
            terminal = session.terminal
            if terminal is not None and self._cursor.caught_up:
                self.close()
                return terminal
            await session._data.wait()
        return None
