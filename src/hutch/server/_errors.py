"""Every error leaves the server in the spec's envelope: ``{"detail": {"error", "message"}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hutch.protocol._errors import ErrorType, make_error
from hutch.runtime._interface import SpawnError

log = logging.getLogger("hutch.server")


class ApiError(Exception):
    """Raised anywhere in a request; becomes the error envelope with the table's status."""

    def __init__(
        self,
        error: ErrorType,
        message: str,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.wire = make_error(error, message, status)
        self.headers = headers


def not_found(kind: str, name: str, hint: str = "") -> ApiError:
    msg = f"{kind} '{name}' not found"
    return ApiError(ErrorType.NOT_FOUND, f"{msg}; {hint}" if hint else msg)


def _loc(loc: tuple[object, ...] | list[object]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _validation_message(exc: RequestValidationError) -> str:
    msgs = []
    for err in exc.errors()[:10]:
        where = _loc(err.get("loc", ()))
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            msgs.append(f"unknown field '{where}'")
        elif kind == "missing":
            msgs.append(f"field '{where}' is required")
        elif kind == "json_invalid":
            msgs.append("request body is not valid JSON")
        else:
            text = str(err.get("msg", "invalid value"))
            text = text.removeprefix("Value error, ")
            msgs.append(f"field '{where}': {text}")
    return "Invalid request: " + "; ".join(msgs)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.wire.envelope(), status_code=exc.wire.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        wire = make_error(ErrorType.VALIDATION, _validation_message(exc))
        return JSONResponse(wire.envelope(), status_code=wire.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            wire = make_error(
                ErrorType.NOT_FOUND, f"No such endpoint: {request.method} {request.url.path}"
            )
        elif exc.status_code == 405:
            wire = make_error(
                ErrorType.METHOD_NOT_ALLOWED,
                f"Method {request.method} is not allowed on {request.url.path}",
            )
        else:
            wire = make_error(ErrorType.INTERNAL, str(exc.detail), exc.status_code)
        return JSONResponse(wire.envelope(), status_code=wire.status)

    @app.exception_handler(SpawnError)  # e.g. the sandbox is at its process limit
    async def _spawn(_: Request, exc: SpawnError) -> JSONResponse:
        wire = make_error(ErrorType.COMMAND_ERROR, f"Command could not start: {exc}")
        return JSONResponse(wire.envelope(), status_code=wire.status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        wire = make_error(
            ErrorType.INTERNAL, f"Internal server error ({type(exc).__name__}); see the server log"
        )
        return JSONResponse(wire.envelope(), status_code=500)
