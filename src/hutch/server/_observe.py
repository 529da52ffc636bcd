"""What operators see of each request: its id, its log line, its metrics; and ``GET /metrics``.

:class:`Observe` is the outermost ASGI layer (outside :class:`~hutch.server._errors.Guard`, so
even a malformed URL or a 500 is seen). For every HTTP request and WebSocket upgrade it:

* picks the request id (the client's ``X-Request-Id`` when it is 1–128 characters of
  ``[A-Za-z0-9._:-]``, else a new one), makes it the context's current request (so the error
  envelope's ``detail.request_id`` and every log line of the request carry it), and sends it back
  as ``X-Request-Id`` (on a WebSocket: in the upgrade's answer, or its refusal);
* when the response body has ended (a streamed response: its last chunk; a WebSocket: its
  close), writes the request's log line and counts it: method, route *template* (never the raw
  path, which holds ids and file paths), status, duration, and the envelope's error type.

The layer only wraps ``send``; it never reads or buffers a body, so streaming responses and
WebSockets pass through as they are.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hutch.protocol._errors import ErrorType
from hutch.server import _logs
from hutch.server._deps import Services, authenticate
from hutch.server._errors import ApiError
from hutch.server._metrics import Metrics
from hutch.store import Sandbox, Workspace

router = APIRouter()

_HEADER = b"x-request-id"
#: The route label of a request no route matched (its path is not a label: unbounded).
UNMATCHED = "unmatched"


class Observe:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        supplied = next((v for k, v in scope["headers"] if k == _HEADER), None)
        info = _logs.RequestInfo(
            _logs.request_id(supplied.decode("latin-1") if supplied is not None else None)
        )
        header = (_HEADER, info.request_id.encode())
        began = time.perf_counter()
        status: int | None = None
        ended: float | None = None

        async def observed(message: Message) -> None:
            nonlocal status, ended
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status = int(message["status"])
                message = _with_header(message, header)
            elif kind == "websocket.accept":
                status = 101
                message = _with_header(message, header)
            elif kind == "websocket.close" and status is None:
                status = 403  # refused without the denial extension: the server answers 403
            elif kind in ("http.response.body", "websocket.http.response.body") and not message.get(
                "more_body"
            ):
                ended = time.perf_counter()
            await send(message)

        try:
            with _logs.serving(info):
                await self.app(scope, receive, observed)
        finally:
            end = ended if ended is not None else time.perf_counter()
            with _logs.serving(info):
                self._record(scope, info, status, end - began)

    def _record(
        self, scope: Scope, info: _logs.RequestInfo, status: int | None, seconds: float
    ) -> None:
        websocket = scope["type"] == "websocket"
        method = "WEBSOCKET" if websocket else str(scope.get("method", ""))
        route = route_template(scope)
        # No status: the client went away (or the app failed) before an answer started.
        code = status if status is not None else 499
        metrics = self.metrics
        metrics.http_requests.labels(method, route, str(code)).inc()
        metrics.http_seconds.labels(method, route).observe(seconds)
        if info.error is not None:
            metrics.http_errors.labels(info.error, str(code)).inc()
        sandbox_id = info.sandbox_id or (scope.get("path_params") or {}).get("sandbox_id")
        fields: dict[str, Any] = {
            "event": "http.request",
            "method": method,
            "route": route,
            "path": scope.get("path"),
            "status": code,
            "duration_ms": round(seconds * 1000, 1),
            "request_id": info.request_id,
        }
        if info.workspace_id is not None:
            fields["workspace_id"] = info.workspace_id
        if sandbox_id is not None:
            fields["sandbox_id"] = sandbox_id
        if info.error is not None:
            fields["error"] = info.error
        client = scope.get("client")
        if client:
            fields["client"] = client[0]
        level = logging.WARNING if code >= 500 else logging.INFO
        _logs.REQUESTS.log(
            level, "%s %s %s", method, scope.get("path"), code, extra={"fields": fields}
        )


def route_template(scope: Scope) -> str:
    """The matched route's path template, with the prefix it was included under
    (``/api/v2/sandboxes/boxes/{name}``); :data:`UNMATCHED` when no route matched.

    FastAPI puts the route as declared (without its router's prefix) in the scope; the prefix is
    what the request's path has before the route's own part.
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return UNMATCHED
    params = scope.get("path_params") or {}
    try:
        own = str(getattr(route, "path_format", template)).format(
            **{k: str(v) for k, v in params.items()}
        )
    except (KeyError, IndexError, ValueError):
        return template
    path = str(scope.get("path", ""))
    return path[: len(path) - len(own)] + template if path.endswith(own) else template


def _with_header(message: Message, header: tuple[bytes, bytes]) -> Message:
    """``message`` with our ``X-Request-Id`` (replacing one a relayed service sent)."""
    headers = [h for h in message.get("headers") or [] if h[0].lower() != _HEADER]
    return {**message, "headers": [*headers, header]}


# -- GET /metrics --------------------------------------------------------------------------------


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format. An admin API key unless the server runs ``--metrics-public``."""
    svc: Services = request.app.state.services
    if not svc.config.metrics_public:
        who = authenticate(request)
        if not who.is_admin:
            raise ApiError(
                ErrorType.FORBIDDEN,
                "GET /metrics needs an admin API key (hutch keys create --admin); or run "
                "hutch serve --metrics-public for a scraper on a private network",
            )
    async with svc.db.session() as s:
        counted = (
            await s.execute(
                select(Sandbox.status, Workspace.name, func.count())
                .join(Workspace, Sandbox.workspace_id == Workspace.id)
                .where(Sandbox.node == svc.manager.node)
                .group_by(Sandbox.status, Workspace.name)
            )
        ).all()
        workspaces = (await s.execute(select(Workspace.name))).scalars().all()
    body = svc.manager.metrics.render(
        {(status, ws): n for status, ws, n in counted},
        workspaces,
        svc.sessions.log_bytes,
        svc.config.session_log_budget,
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)
