"""The application class, and an OpenAPI document that states every route's error answers.

FastAPI documents only success and its own 422 (in a shape hutch never sends). Here every
operation gets the error statuses it can answer, each with the one envelope
(:class:`ErrorEnvelope`), derived from the route rather than written on each of them:

* every operation: 400 ``BadRequest`` (a malformed URL, refused before routing) and 500;
* with parameters or a body: 422 ``ValidationError``; with a body: 413 ``PayloadTooLarge``;
* with a path parameter: 404 (the named sandbox, template, snapshot, … does not exist);
* behind an API key (the ``principal`` dependency): 401 and 403 (a web-UI cookie used
  cross-site);
* what the module's own code paths raise (:data:`_MODULE_ERRORS`: conflicts, quotas, features
  hutch lacks, timeouts, a command that cannot start).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

from fastapi import FastAPI, routing
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict
from starlette.types import ASGIApp

from hutch.protocol._errors import STATUS, ErrorType
from hutch.server._deps import principal
from hutch.server._errors import Guard

E = ErrorType
#: The security scheme of every authenticated operation: the ``X-Api-Key`` header.
API_KEY = "ApiKey"

#: Errors a route answers beyond the ones its shape implies, by the module that defines it
#: (including what the helpers it calls raise: the manager's image pulls and sandbox configs,
#: the workspace quotas, a stopped sandbox's resume). Statuses come from the ErrorType table;
#: a few errors travel with their own status (``int``).
_MODULE_ERRORS: dict[str, tuple[ErrorType | int, ...]] = {
    "hutch.server._control": (
        E.NOT_READY,  # 400: start/stop a sandbox in the wrong state
        E.TIMEOUT,  # 408: wait_for_ready ran out
        E.ALREADY_EXISTS,  # 409 (and NameConflict, InUse)
        E.IMAGE_PULL,  # 422 (and SandboxConfig, CrashLoop)
        E.QUOTA_EXCEEDED,  # 429
        E.NOT_IMPLEMENTED,  # 501: fields of features hutch does not have
    ),
    "hutch.server._snapshots": (
        E.NOT_READY,
        E.ALREADY_EXISTS,
        E.QUOTA_EXCEEDED,
        E.NOT_IMPLEMENTED,
    ),
    "hutch.server._registries": (E.ALREADY_EXISTS, E.NOT_IMPLEMENTED),
    # A download link carries a token, not a key: expired or forged 401, another sandbox's 403.
    "hutch.server._files": (E.NOT_READY, E.UNAUTHORIZED, E.FORBIDDEN, E.QUOTA_EXCEEDED),
    "hutch.server._service": (E.NOT_READY, E.QUOTA_EXCEEDED, E.NOT_IMPLEMENTED),
    "hutch.server._dataplane": (
        E.NOT_READY,  # 400, as ReadError, WriteError and CommandError
        E.ALREADY_EXISTS,  # 409: a resume raced another state change
        E.QUOTA_EXCEEDED,  # 429: resuming a stopped sandbox is under the workspace's quota
        E.PAYLOAD_TOO_LARGE,  # 413: an upload, or a command, over its limit
        411,  # an upload without Content-Length
        416,  # a Range past the end of the file
    ),
    "hutch.server._sse_exec": (
        E.NOT_READY,
        E.QUOTA_EXCEEDED,
        E.SESSION_EXPIRED,  # 410
        E.PAYLOAD_TOO_LARGE,
    ),
}

#: The HTTP reason of each status the document states (its ``description``).
_REASONS = {
    400: "Bad request: a malformed URL, or a command, path or sandbox state the request cannot use",
    401: "No API key, or an unknown one (X-Api-Key)",
    403: "Not allowed: a web-UI cookie used cross-site, or a token of another sandbox",
    404: "Not found",
    408: "Timed out",
    409: "Conflict: the name is taken, or the resource is in use or changing state",
    410: "Gone: the command session expired",
    411: "Length required",
    413: "Payload too large",
    416: "Range not satisfiable",
    422: "Invalid request: the message names the field and what it accepts",
    429: "Quota exceeded",
    500: "Internal server error (the server log has the details)",
    501: "A feature this hutch server does not have yet",
}


class ErrorDetail(BaseModel):
    """What went wrong: a machine-readable type and a message that says what to do next."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorType
    message: str
    #: The request's id (its ``X-Request-Id``, and its log line's ``request_id``); SDKs ignore it.
    request_id: str | None = None
    #: Which quota a ``QuotaExceeded`` is about (only on those).
    quota_type: Literal["sandboxes", "cpu", "memory"] | None = None


class ErrorEnvelope(BaseModel):
    """Every error response: ``{"detail": {"error": <type>, "message": <text>}}`` (spec §2.0)."""

    model_config = ConfigDict(extra="forbid")
    detail: ErrorDetail


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _dependants(sub)


def _api_routes(app: FastAPI) -> Iterator[Any]:
    """Every API route of ``app`` with its full path (an ``APIRoute``, or what stands for one
    with the prefix it was included under)."""
    contexts = getattr(routing, "iter_route_contexts", None)
    if contexts is None:  # FastAPI before 0.16x flattens included routers into app.routes
        yield from (r for r in app.routes if isinstance(r, APIRoute))
        return
    for context in contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def authenticated(route: APIRoute) -> bool:
    """Whether ``route`` needs an API key (or the web UI's cookie)."""
    return any(d.call is principal for d in _dependants(route.dependant))


def route_errors(route: APIRoute) -> set[int]:
    """The error statuses ``route`` can answer (see the module docstring)."""
    parts = list(_dependants(route.dependant))
    statuses = {400, 500}
    has_body = route.body_field is not None
    has_params = has_body or any(
        d.path_params or d.query_params or d.header_params or d.cookie_params for d in parts
    )
    if has_params:
        statuses.add(STATUS[E.VALIDATION])
    if has_body:
        statuses.add(STATUS[E.PAYLOAD_TOO_LARGE])
    if route.dependant.path_params:
        statuses.add(STATUS[E.NOT_FOUND])
    if authenticated(route):
        statuses |= {STATUS[E.UNAUTHORIZED], STATUS[E.FORBIDDEN]}
    for extra in _MODULE_ERRORS.get(route.endpoint.__module__, ()):
        statuses.add(extra if isinstance(extra, int) else STATUS[extra])
    return statuses


def _envelope_schemas() -> dict[str, Any]:
    doc = ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = doc.pop("$defs", {})
    return {**defs, "ErrorEnvelope": doc}


def with_errors(app: FastAPI, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` (FastAPI's document of ``app``) with every operation's error responses."""
    ref = {"$ref": "#/components/schemas/ErrorEnvelope"}
    for route in _api_routes(app):
        if not route.include_in_schema:
            continue
        operations = doc["paths"].get(route.path_format, {})
        for method in route.methods:
            operation = operations.get(method.lower())
            if operation is None:
                continue
            if authenticated(route):
                operation["security"] = [{API_KEY: []}]
            responses = operation.setdefault("responses", {})
            for status in sorted(route_errors(route)):
                responses[str(status)] = {
                    "description": _REASONS.get(status, "Error"),
                    "content": {"application/json": {"schema": ref}},
                }
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    # FastAPI's own 422 shapes are never sent: hutch answers 422 in the envelope too.
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(_envelope_schemas())
    doc["components"]["securitySchemes"] = {
        API_KEY: {"type": "apiKey", "in": "header", "name": "X-Api-Key"}
    }
    return doc


class EnvelopedAPI(FastAPI):
    """The hutch application: :class:`~hutch.server._errors.Guard` outside everything (so even
    Starlette's own error middleware answers in the envelope and keeps the connection), and an
    OpenAPI document that states the error answers."""

    #: Wrapped around Guard, outermost (request ids, logs and metrics see every answer).
    outermost: Callable[[ASGIApp], ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = Guard(super().build_middleware_stack())
        return self.outermost(app) if self.outermost is not None else app

    _stated: dict[str, Any] | None = None

    def openapi(self) -> dict[str, Any]:
        doc = super().openapi()
        if doc is not self._stated:  # FastAPI (re)built it: routes were added
            self._stated = with_errors(self, doc)
        return doc
