"""Every error leaves the server in the spec's envelope: ``{"detail": {"error", "message"}}``.

Three layers make "every" true:

* exception handlers turn :class:`ApiError`, request validation, Starlette's own HTTP errors
  (unknown path 404, 405, an unreadable body) and any uncaught exception into the envelope;
* :class:`Guard` wraps the whole application, outside Starlette's error middleware
  (:class:`hutch.server._openapi.EnvelopedAPI` puts it there): it refuses malformed URLs before
  routing and keeps the connection usable after a 500 (Starlette re-raises after answering,
  and uvicorn would then drop the connection);
* :mod:`hutch.server._openapi` states those answers in the OpenAPI document.

What stays uvicorn's own (plain text, ``Connection: close``): a request h11 cannot parse, such as
a request line with bytes outside visible ASCII (a raw ``0xff`` or a space in the path). Those
never reach the application.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from hutch.domain import DomainError, QuotaExceeded, SandboxGone, WrongState
from hutch.protocol._errors import ErrorType, WireError, error_for_status, make_error
from hutch.runtime._interface import SpawnError
from hutch.server._logs import current_request

log = logging.getLogger("hutch.server")


class ApiError(Exception):
    """Raised anywhere in a request; becomes the error envelope with the table's status."""

    def __init__(
        self,
        error: ErrorType,
        message: str,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.wire = make_error(error, message, status, fields)
        self.headers = headers


#: Domain errors on the wire, in one table: each class's error type (its status is the protocol
#: table's). The message is the error's own; :meth:`DomainError.fields` go next to it in
#: ``detail`` (``quota_type`` of a quota error). The first class in this order that the error is
#: an instance of decides.
DOMAIN_ERRORS: dict[type[DomainError], ErrorType] = {
    QuotaExceeded: ErrorType.QUOTA_EXCEEDED,
    WrongState: ErrorType.NOT_READY,
    SandboxGone: ErrorType.NOT_FOUND,
}


def api_error(exc: DomainError, message: str | None = None) -> ApiError:
    """The wire form of a domain error (``message`` replaces its own, to add what to do)."""
    error = next(
        (kind for cls, kind in DOMAIN_ERRORS.items() if isinstance(exc, cls)), ErrorType.INTERNAL
    )
    return ApiError(error, message or str(exc), fields=exc.fields())


def not_found(kind: str, name: str, hint: str = "") -> ApiError:
    msg = f"{kind} '{name}' not found"
    return ApiError(ErrorType.NOT_FOUND, f"{msg}; {hint}" if hint else msg)


def _loc(loc: tuple[object, ...] | list[object]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


#: pydantic's error types for "the body is not an object" (a JSON array, a string, or a body
#: FastAPI did not parse as JSON because its Content-Type is not JSON).
_NOT_AN_OBJECT = {"model_attributes_type", "dict_type", "model_type"}
_NOT_JSON = "request body is not valid JSON"


def _validation_message(exc: RequestValidationError) -> str:
    msgs = []
    for err in exc.errors()[:10]:
        loc = tuple(err.get("loc", ()))
        where = _loc(loc)
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            msgs.append(f"unknown field '{where}'")
        elif kind == "missing":
            msgs.append(f"field '{where}' is required")
        elif kind == "json_invalid":
            why = (err.get("ctx") or {}).get("error")
            pos = loc[1] if len(loc) > 1 else None
            msgs.append(f"{_NOT_JSON} ({why} at byte {pos})" if why else _NOT_JSON)
        elif kind in _NOT_AN_OBJECT and loc == ("body",):
            msgs.append(
                "request body must be a JSON object, sent with Content-Type: application/json"
            )
        else:
            text = str(err.get("msg", "invalid value"))
            text = text.removeprefix("Value error, ")
            msgs.append(f"field '{where}': {text}")
    return "Invalid request: " + "; ".join(msgs)


#: What FastAPI says when it cannot read a JSON body at all (not UTF-8, nested too deep); the
#: cause is a client's malformed body, answered like any other invalid JSON.
_UNPARSED_BODY = "There was an error parsing the body"


def _http_wire(request: Request, exc: StarletteHTTPException) -> WireError:
    status = exc.status_code
    if status == 404:
        return make_error(
            ErrorType.NOT_FOUND,
            f"No such endpoint: {request.method} {request.url.path}; see /docs for the API",
        )
    if status == 405:
        return make_error(
            ErrorType.METHOD_NOT_ALLOWED,
            f"Method {request.method} is not allowed on {request.url.path}"
            + (f"; use {exc.headers['Allow']}" if exc.headers and "Allow" in exc.headers else ""),
        )
    if status == 400 and exc.detail == _UNPARSED_BODY:
        cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else "unreadable"
        return make_error(
            ErrorType.VALIDATION,
            f"Invalid request: {_NOT_JSON} ({cause}); send a UTF-8 JSON object",
        )
    return make_error(error_for_status(status), str(exc.detail), status)


def error_response(wire: WireError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The envelope of ``wire`` with its status: every error answer of the server is made here.

    Inside a request it also carries ``detail.request_id`` (the ``X-Request-Id`` of the answer
    and of the request's log line; SDKs read only ``error`` and ``message``), and the request's
    metrics learn its error type.
    """
    body = wire.envelope()
    info = current_request()
    if info is not None:
        body["detail"]["request_id"] = info.request_id
        info.error = wire.error
    return JSONResponse(body, status_code=wire.status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.wire, exc.headers)

    @app.exception_handler(DomainError)
    async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
        wire = api_error(exc).wire
        return error_response(wire)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(make_error(ErrorType.VALIDATION, _validation_message(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(_http_wire(request, exc), exc.headers)

    @app.exception_handler(SpawnError)
    async def _spawn(_: Request, exc: SpawnError) -> JSONResponse:
        # The command could not start in the sandbox (its pids limit, a missing shell): a fact
        # about the sandbox, as on the streaming transports, never a server fault.
        return error_response(
            make_error(ErrorType.COMMAND_ERROR, f"Command could not start: {exc}")
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(_internal(exc))


def _internal(exc: BaseException) -> WireError:
    # The type name helps an operator find the log entry; the traceback stays in the log.
    return make_error(
        ErrorType.INTERNAL, f"Internal server error ({type(exc).__name__}); see the server log"
    )


# -- the outermost layer ---------------------------------------------------------------------------

#: A ``%`` not followed by two hex digits (RFC 3986 §2.1).
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def _service_path(path: str) -> bool:
    """Service URLs carry a sandboxed web app's own URLs, which hutch passes on untouched."""
    return path in ("/svc", "/svc-auth") or path.startswith(("/svc/", "/svc-auth/"))


def url_problem(raw_path: bytes, query: bytes) -> str | None:
    """Why a request target is malformed (as a message), or None.

    The path and the query must be well-formed percent-encoding of UTF-8 text, and the path must
    not hold a NUL: uvicorn decodes undecodable bytes to U+FFFD, so without this a name would
    silently change into another one.
    """
    for part, raw in (("path", raw_path), ("query string", query)):
        if _BAD_PERCENT.search(raw):
            return (
                f"Malformed URL: the {part} has a '%' not followed by two hex digits; "
                "percent-encode a literal '%' as %25"
            )
        decoded = unquote_to_bytes(raw)
        try:
            decoded.decode("utf-8")
        except UnicodeDecodeError:
            return (
                f"Malformed URL: the {part} is not UTF-8 once percent-decoded; "
                "percent-encode the UTF-8 bytes of each character"
            )
        if part == "path" and b"\x00" in decoded:
            return "Malformed URL: the path holds a NUL byte (%00)"
    return None


class Guard:
    """Outermost ASGI layer: refuse malformed URLs, and answer every uncaught exception of an
    HTTP request with the 500 envelope without losing the connection.

    Starlette's error middleware sends the 500 (from the ``Exception`` handler) and then re-raises,
    so that servers can log; uvicorn logs the traceback a second time and closes a keep-alive
    connection that did nothing wrong. Here a re-raised exception whose response is complete is
    dropped (the handler logged it); one that broke a response midway still propagates, since
    only closing the connection can tell the client that body is cut short.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not _service_path(scope["path"]):
            raw_path = scope.get("raw_path") or scope["path"].encode()
            problem = url_problem(raw_path, scope.get("query_string", b""))
            if problem is not None:
                await _refuse(scope, receive, send, make_error(ErrorType.BAD_REQUEST, problem))
                return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        state = {"started": False, "complete": False}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                state["complete"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if state["complete"]:
                return
            if state["started"]:
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await error_response(_internal(exc))(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, wire: WireError) -> None:
    response = error_response(wire)
    if scope["type"] == "http":
        await response(scope, receive, send)
        return
    ws = WebSocket(scope, receive, send)
    if "websocket.http.response" in scope.get("extensions", {}):
        await ws.send_denial_response(response)
    else:
        await ws.close(1008, wire.message[:120])
