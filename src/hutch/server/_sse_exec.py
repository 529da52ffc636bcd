"""Command sessions over Server-Sent Events (0.13+ with
LANGSMITH_EXPERIMENTAL_FEATURES=sandbox_sse_exec): /execute/stream/start and
/execute/stream/resume (spec §9.1 "Exec over SSE").

A command started here is the same kind of session as one started over ``/execute/ws`` (same
:class:`~hutch.sessions.SessionManager`, same ids), so either transport can pick up a command
the other started. One response is one subscriber attached to the session:

* ``POST .../execute/stream/start`` ``{command, command_id?, shell?, timeout_seconds?,
  idle_timeout_seconds?, ttl_seconds?, env?, cwd?, run_config?}`` gets or creates the command
  (stdin is closed at spawn: SSE has no way to send input) and streams from offset 0.
* ``POST .../execute/stream/resume`` ``{command_id, stdout_offset?, stderr_offset?}`` attaches
  from byte offsets.

Errors before the stream starts are the usual JSON envelope (404 ``CommandNotFound``, 410
``SessionExpired``, 422 ``ValidationError``, ...). After that the response is
``text/event-stream``::

    event: started       data: {"command_id": ..., "pid": ...}      (first, on start and resume)
    event: stdout        data: {"offset": <byte offset>, "data": <base64 of the raw bytes>}
    event: stderr        data: (the same)
    event: stream_end    data: {"stream": "stdout"|"stderr", "offset": <length of the stream>}
    event: exit          data: {"exit_code": ...}                   (terminal)
    event: error         data: {"error_type": ..., "error": ...}    (terminal)
    event: ack_required  data: {"stdout_offset": ..., "stderr_offset": ...}

``data`` is the bytes exactly as the command wrote them (invalid UTF-8 included), so
``offset + len(decoded data)`` is always the next offset of that stream. A response is bounded
(:data:`LIMITS`): after that many bytes of output or seconds it ends with ``ack_required`` at the
offsets sent so far and the client resumes from them, which keeps proxies (and whatever they
buffer) bounded. ``: ping`` comment lines keep a quiet stream alive (the SDK's read timeout is
60 s). ``error`` with ``ServerShuttingDown`` (see :func:`close_all`) also makes the SDK resume.

Delivery follows the sessions' no-loss rule: a chunk counts as delivered once its frame was
written and the next event is pulled; a chunk pulled but not written (the bound was reached, the
client went away) stays in the log for the resume.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator
from starlette.types import Receive, Scope, Send

from hutch.protocol import _exec as proto
from hutch.protocol._errors import ErrorType
from hutch.server._auth import Principal
from hutch.server._commands import CommandRequest, recover_commands, start_command
from hutch.server._dataplane import ready_sandbox
from hutch.server._deps import Services, principal, services
from hutch.server._errors import ApiError
from hutch.server._metrics import Metrics
from hutch.sessions import (
    CommandNotFound,
    CommandSession,
    Exit,
    RawOutput,
    SessionError,
    SessionExpired,
    SlowConsumer,
    Subscription,
    Terminal,
)

log = logging.getLogger("hutch.server")

#: Data-plane routes (under /dp/{sandbox_id}).
router = APIRouter()
#: Control-plane routes (mounted under every control prefix).
control_router = APIRouter()

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds of one SSE response."""

    #: Output bytes (raw, before base64) after which the response ends with ``ack_required``.
    max_bytes: int = 8 * MiB
    #: Seconds after which the response ends with ``ack_required``, output or not: some proxies
    #: cut long responses, and a resume costs one request.
    max_seconds: float = 60.0
    #: Seconds without an event before a ``: ping`` comment (the SDK gives up after 60 s).
    heartbeat: float = 15.0


#: The bounds every response uses (tests may swap in smaller ones).
LIMITS = Limits()
#: How long :func:`close_all` waits for open streams to send their ``ServerShuttingDown``.
SHUTDOWN_GRACE = 5.0

_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_STREAMS = ("stdout", "stderr")
#: Fields of the exec WebSocket's ``execute`` that need its control channel.
_WS_ONLY = ("pty", "kill_on_disconnect", "close_stdin", "cols", "rows")


# -- request bodies ------------------------------------------------------------------------------


class StartBody(BaseModel):
    """Body of ``/execute/stream/start``, with the SDK's field names (spec §9.1)."""

    model_config = ConfigDict(extra="forbid")
    command: StrictStr
    command_id: StrictStr | None = None
    shell: StrictStr = "/bin/bash"
    #: 0 = no deadline; -1 = never for the other two (wire conventions of ``/execute/ws``).
    timeout_seconds: StrictInt = 60
    idle_timeout_seconds: StrictInt = 300
    ttl_seconds: StrictInt = 600
    env: dict[StrictStr, StrictStr] | None = None
    cwd: StrictStr | None = None
    run_config: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_control_channel(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in _WS_ONLY:
                if name in data:
                    raise ValueError(
                        f"'{name}' is not available over SSE, which cannot send input or "
                        "signals to a command; use the exec WebSocket (/execute/ws)"
                    )
        return data


class ResumeBody(BaseModel):
    """Body of ``/execute/stream/resume``: the offsets are the client's ack and its cursor."""

    model_config = ConfigDict(extra="forbid")
    command_id: StrictStr
    stdout_offset: Annotated[StrictInt, Field(ge=0)] = 0
    stderr_offset: Annotated[StrictInt, Field(ge=0)] = 0


def _command_request(body: StartBody) -> CommandRequest:
    """The body checked by the same rules as the WebSocket's ``execute`` (422 otherwise)."""
    try:
        execute = proto.Execute(
            command=body.command,
            timeout_seconds=body.timeout_seconds,
            shell=body.shell,
            idle_timeout_seconds=body.idle_timeout_seconds,
            ttl_seconds=body.ttl_seconds,
            env=body.env,
            cwd=body.cwd,
            command_id=body.command_id,
            close_stdin=True,
            run_config=proto.RunConfig.from_json(body.run_config),
        )
    except proto.ExecProtocolError as exc:
        raise ApiError(ErrorType.VALIDATION, f"Invalid request: {exc}") from None
    return CommandRequest(
        command=execute.command,
        shell=execute.shell,
        env=execute.env,
        cwd=execute.cwd,
        run_config=execute.run_config,
        timeout=execute.timeout_seconds,
        idle_timeout=execute.idle_timeout_seconds,
        ttl=execute.ttl_seconds,
        command_id=execute.command_id,
    )


# -- the event stream ----------------------------------------------------------------------------


def _frame(event: str, payload: dict[str, Any]) -> bytes:
    # json.dumps never emits a newline here, so each payload is one ``data:`` line.
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


_PING = b": ping\n\n"


class EventStream:
    """One open SSE response: a subscriber of ``session`` from ``offsets``.

    :meth:`frames` produces the bytes to send; :meth:`close` detaches (idempotent). Registered
    in :data:`_OPEN` while it is being served so that :func:`close_all` can end it.
    """

    def __init__(
        self,
        owner: object,
        session: CommandSession,
        subscription: Subscription,
        offsets: tuple[int, int],
        limits: Limits | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.owner = owner
        self.metrics = metrics
        self._began = time.perf_counter()
        self.session = session
        self.subscription = subscription
        self.limits = limits or LIMITS
        #: Per stream, the offset after the last chunk written: the resume point to announce.
        self.sent = dict(zip(_STREAMS, offsets, strict=True))
        self._shutdown = asyncio.Event()
        self._closed = asyncio.Event()

    def shut_down(self) -> None:
        """Ask the stream to end with ``ServerShuttingDown`` (the client then resumes)."""
        self._shutdown.set()

    def close(self) -> None:
        self.subscription.close()
        _OPEN.discard(self)
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _ack_required(self) -> bytes:
        return _frame(
            "ack_required",
            {"stdout_offset": self.sent["stdout"], "stderr_offset": self.sent["stderr"]},
        )

    def _output(self, out: RawOutput) -> bytes:
        self.sent[out.stream] = out.offset + len(out.data)
        return _frame(
            out.stream, {"offset": out.offset, "data": base64.b64encode(out.data).decode("ascii")}
        )

    def _terminal(self, event: Terminal) -> list[bytes]:
        # stream_end lets the SDK flush a character its decoder holds back; the offsets are the
        # streams' lengths, which a client that caught up has reached.
        ends = [
            _frame("stream_end", {"stream": "stdout", "offset": self.session.stdout_bytes}),
            _frame("stream_end", {"stream": "stderr", "offset": self.session.stderr_bytes}),
        ]
        if isinstance(event, Exit):
            return [*ends, _frame("exit", {"exit_code": event.exit_code})]
        return [*ends, _frame("error", {"error_type": event.error_type, "error": event.message})]

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """``started``, then events until a terminal one, ``ack_required`` or shutdown.

        Each frame is yielded only once the previous one was written (the caller awaits its
        send before pulling again), which is what marks output delivered.
        """
        loop = asyncio.get_running_loop()
        limits = self.limits
        session = self.session
        yield _frame("started", {"command_id": session.command_id, "pid": session.pid})
        began = last = loop.time()
        deadline = began + limits.max_seconds
        sent_bytes = 0
        # The pending pull outlives heartbeats (cancelling it loses nothing, but there is no
        # need to); both tasks are owned here and awaited in ``finally``.
        pull: asyncio.Task[RawOutput | Terminal | None] | None = None
        stop = asyncio.create_task(self._shutdown.wait(), name="sse-shutdown")
        try:
            while True:
                if pull is None:
                    pull = asyncio.create_task(self.subscription.next_raw(), name="sse-pull")
                wake = min(last + limits.heartbeat, deadline)
                await asyncio.wait(
                    {pull, stop},
                    timeout=max(0.0, wake - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if stop.done():
                    yield _frame(
                        "error",
                        {
                            "error_type": "ServerShuttingDown",
                            "error": "The server is shutting down; resume from your offsets",
                        },
                    )
                    return
                if not pull.done():
                    if loop.time() >= deadline:
                        yield self._ack_required()
                        return
                    yield _PING
                    last = loop.time()
                    continue
                done, pull = pull, None
                try:
                    event = done.result()
                except SlowConsumer:
                    # Others got (and the log dropped) bytes this client had not been sent: it
                    # resumes from its offsets and continues at the oldest byte kept.
                    yield self._ack_required()
                    return
                if isinstance(event, RawOutput):
                    if sent_bytes >= limits.max_bytes or loop.time() >= deadline:
                        # This chunk was not written, so it is not delivered: the resume gets it.
                        yield self._ack_required()
                        return
                    frame = self._output(event)
                    sent_bytes += len(event.data)
                    yield frame
                    if self.metrics is not None:
                        self.metrics.output("sse", event.stream, len(event.data))
                    last = loop.time()
                    continue
                if event is None:  # detached under us (cannot happen while we are attached)
                    yield self._ack_required()
                    return
                for frame in self._terminal(event):
                    yield frame
                if self.metrics is not None:
                    self.metrics.exec_done("sse", time.perf_counter() - self._began)
                return
        finally:
            tasks = [t for t in (pull, stop) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


#: Streams being served (all servers of this process; each knows its ``owner``).
_OPEN: set[EventStream] = set()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` of one :class:`EventStream`, owning everything it starts.

    Unlike a plain :class:`StreamingResponse`, the frame generator is always closed here (so the
    subscriber detaches at once when the client goes away, even mid-send), and the two tasks
    (send the frames; notice the disconnect) are always awaited.
    """

    def __init__(self, stream: EventStream) -> None:
        self._frames = stream.frames()
        super().__init__(self._frames, media_type="text/event-stream", headers=_HEADERS)
        self.stream = stream

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async with contextlib.aclosing(self._frames) as frames:
            async for frame in frames:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        _OPEN.add(self.stream)
        try:
            sending = asyncio.create_task(self.stream_response(send), name="sse-send")
            gone = asyncio.create_task(_disconnected(receive), name="sse-disconnect")
            try:
                await asyncio.wait({sending, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sending, gone):
                    task.cancel()
                results = await asyncio.gather(sending, gone, return_exceptions=True)
        finally:
            self.stream.close()
        for result in results:
            # A client that went away mid-send shows up as OSError (uvicorn's ClientDisconnected).
            if isinstance(result, Exception) and not isinstance(
                result, (asyncio.CancelledError, OSError)
            ):
                raise result


def _attach(session: CommandSession, stdout_offset: int, stderr_offset: int) -> Subscription:
    try:
        return session.attach(stdout_offset=stdout_offset, stderr_offset=stderr_offset)
    except SessionExpired:
        raise _expired(session.command_id) from None


def _expired(command_id: str) -> ApiError:
    return ApiError(
        ErrorType.SESSION_EXPIRED,
        f"Session expired: {command_id}; a finished command's output is kept for its "
        "ttl_seconds (600 by default), run it again to get new output",
    )


@router.post("/dp/{sandbox_id}/execute/stream/start")
async def stream_start(
    sandbox_id: str,
    body: StartBody,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> EventStreamResponse:
    row = await ready_sandbox(svc, who, sandbox_id)
    session, created = await start_command(svc, row, _command_request(body))
    subscription = _attach(session, 0, 0)
    try:
        if created:
            # SSE cannot carry input: stdin is closed at spawn so a command reading it sees EOF
            # (a re-sent start of a known id leaves the command as it is).
            with contextlib.suppress(SessionError, OSError):
                await session.close_stdin()
        return EventStreamResponse(
            EventStream(svc, session, subscription, (0, 0), metrics=svc.manager.metrics)
        )
    except BaseException:
        subscription.close()
        raise


@router.post("/dp/{sandbox_id}/execute/stream/resume")
async def stream_resume(
    sandbox_id: str,
    body: ResumeBody,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> EventStreamResponse:
    row = await ready_sandbox(svc, who, sandbox_id)
    await recover_commands(svc, row)
    try:
        session = svc.sessions.get(row.id, body.command_id)
    except CommandNotFound:
        raise ApiError(
            ErrorType.COMMAND_NOT_FOUND,
            f"Command not found: {body.command_id}; no command with this id ran on this "
            "sandbox since the server started",
        ) from None
    except SessionExpired:
        raise _expired(body.command_id) from None
    offsets = (body.stdout_offset, body.stderr_offset)
    subscription = _attach(session, *offsets)
    try:
        await svc.manager.touch(row.id)
        return EventStreamResponse(
            EventStream(svc, session, subscription, offsets, metrics=svc.manager.metrics)
        )
    except BaseException:
        subscription.close()
        raise


async def close_all(svc: object) -> None:
    """On shutdown: end every open stream of ``svc`` with ``ServerShuttingDown`` (the SDK then
    resumes from its offsets), waiting up to :data:`SHUTDOWN_GRACE` for them to be sent.

    Call it before the sessions are closed (a killed command would otherwise end its streams
    with ``exit`` 137) and before the HTTP server waits for open responses to finish.
    """
    streams = [s for s in _OPEN if s.owner is svc]
    if not streams:
        return
    for stream in streams:
        stream.shut_down()
    waits = [asyncio.create_task(s.wait_closed(), name="sse-close") for s in streams]
    try:
        await asyncio.wait(waits, timeout=SHUTDOWN_GRACE)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
