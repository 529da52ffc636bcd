"""Service URLs (spec §2.3): signed, expiring access to a port inside a sandbox, over HTTP and
WebSocket, for programs (a token header) and for browsers (a cookie).

``POST …/boxes/{name}/service-url`` signs a token of kind ``service`` for one sandbox id and one
port (and the workspace), valid ``expires_in_seconds`` (1..86400, default 600), and answers

* ``service_url``: ``<base>/svc/<sandbox id>/<port>/``, where ``<base>`` is ``--public-url`` or the
  request's own base URL. Requests under it are relayed to ``127.0.0.1:<port>`` *inside* the
  sandbox's network namespace (:meth:`Runtime.connect`; the host's loopback is out of reach), with
  the token in the ``X-Langsmith-Sandbox-Service-Token`` header (what the SDKs' ``svc.get()``
  send) or in the cookie set by
* ``browser_url``: ``<base>/svc-auth/<sandbox id>/<port>?token=…``, which answers 303 to the
  service root with the token in an ``HttpOnly``, ``SameSite=Lax`` cookie scoped to that service's
  path (``Secure`` over https, ``Max-Age`` until the token expires);
* ``token`` and ``expires_at``.

No API key is needed (nor accepted instead of the token). The token is checked (signature, kind,
expiry, sandbox id and port as in the URL) before anything about the sandbox is looked up, and the
sandbox must still exist in the token's workspace and be ready.

The relays live beside this module: HTTP in :mod:`._service_http`, WebSocket in
:mod:`._service_ws`; this one holds the routes, the URLs and the tokens.

Activity: an HTTP exchange marks the sandbox busy while it runs (``manager.active``); WebSocket
messages count as activity (``manager.touch``), an idle open socket does not.

By default every service of every sandbox is served from the service listener's origin, under its
own path. Path scoping keeps cookies and redirects apart, but it is not a browser security
boundary. With ``--service-domain`` each service is served at a host of its own
(``<id>-<port>.<domain>``, routed by ``_app._SplitOrigins``), with no path prefix: an origin per
service, which is one.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request, Response, WebSocket
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from hutch.protocol._errors import ErrorType
from hutch.server._auth import Principal
from hutch.server._control import _sandbox as find_sandbox
from hutch.server._dataplane import ready_sandbox
from hutch.server._deps import Services, principal, services
from hutch.server._errors import ApiError
from hutch.server._schemas import iso
from hutch.server._service_http import TOKEN_COOKIE, TOKEN_HEADER, Route, _connect, _Exchange, _open
from hutch.server._service_http import relay_http as relay_http  # re-exported for tests
from hutch.server._service_ws import _touch, _ws_handshake, _WsRelay
from hutch.server._tokens import TokenError
from hutch.server._websession import is_https
from hutch.server._ws import refuse
from hutch.store import Sandbox

log = logging.getLogger("hutch.server")

#: Data-plane routes (under /dp/{sandbox_id}).
router = APIRouter()
#: Control-plane routes (mounted under every control prefix).
control_router = APIRouter()

TOKEN_KIND: Final = "service"
PREFIX: Final = "/svc"
AUTH_PREFIX: Final = "/svc-auth"
#: The browser sign-in on a service's own host (``--service-domain``): a path no app is likely
#: to need, answered by hutch, never passed to the service.
HOST_SIGN_IN: Final = "/.hutch/sign-in"
DEFAULT_EXPIRES: Final = 600
MAX_EXPIRES: Final = 86400
#: Open proxied WebSockets per sandbox; more are refused with 429.
MAX_WEBSOCKETS: Final = 256
METHODS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


# -- issuing --------------------------------------------------------------------------------------


class ServiceUrlBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: Annotated[StrictInt, Field(ge=1, le=65535)]
    expires_in_seconds: Annotated[StrictInt, Field(ge=1, le=MAX_EXPIRES)] = DEFAULT_EXPIRES
    access: StrictStr | None = None
    embed_origins: list[StrictStr] | None = None


def public_base(conn: HTTPConnection, svc: Services) -> str:
    """The base URL clients reach services at, no trailing slash; always http(s), also for a
    WebSocket request.

    Services get an origin of their own (``hutch serve --service-port``): a service's page must
    never run on the origin of the web UI, where it could use the UI's session. Their base is
    ``--service-public-url``, else the request's scheme and host with the service port.
    """
    cfg = svc.config
    if cfg.service_public_url:
        return cfg.service_public_url.rstrip("/")
    if cfg.service_port is None:  # services share the API's origin (tests of the relay only)
        if cfg.public_url:
            return cfg.public_url.rstrip("/")
        base = str(conn.base_url).rstrip("/")
    else:
        url = conn.url
        host = url.hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        base = f"{url.scheme}://{host}:{cfg.service_port}"
    if base.startswith("ws"):
        base = "http" + base[2:]
    return base


def _prefix_path(base: str, sandbox_id: str, port: int) -> str:
    """The service's path prefix as clients see it (no trailing slash)."""
    return f"{urlsplit(base).path.rstrip('/')}{PREFIX}/{sandbox_id}/{port}"


def service_host(domain: str, host: str) -> tuple[str, int] | None:
    """The (sandbox id, port) a ``Host`` of ``<id>-<port>.<domain>[:port]`` names, else None."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    match = _SERVICE_HOST.fullmatch(name.lower())
    if match is None or match["domain"] != domain:
        return None
    port = int(match["port"])
    return (match["id"], port) if 1 <= port <= 65535 else None


_SERVICE_HOST = re.compile(r"(?P<id>[0-9a-f]{32})-(?P<port>[0-9]{1,5})\.(?P<domain>.+)")


def service_origin(
    conn: HTTPConnection, svc: Services, sandbox_id: str, port: int
) -> tuple[str, str]:
    """Where one service is reached: its origin (``scheme://host[:port]``) and its path prefix
    there (no trailing slash). With ``--service-domain`` each service has a host of its own and
    no prefix; else all share the service listener's origin, apart by path."""
    base = public_base(conn, svc)
    parts = urlsplit(base)
    domain = svc.config.service_domain
    if domain:
        netloc = f"{sandbox_id}-{port}.{domain}" + (f":{parts.port}" if parts.port else "")
        return f"{parts.scheme}://{netloc}", ""
    return f"{parts.scheme}://{parts.netloc}", _prefix_path(base, sandbox_id, port)


@control_router.post("/boxes/{name}/service-url")
async def create_service_url(
    name: str,
    body: ServiceUrlBody,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    if body.access is not None:
        raise ApiError(
            ErrorType.NOT_IMPLEMENTED,
            f"Login-gated service URLs (access={body.access!r}) are not supported by this hutch "
            "server yet; leave out access to get a token URL",
        )
    if body.embed_origins:
        raise ApiError(
            ErrorType.NOT_IMPLEMENTED,
            "Embedding service URLs in other sites (embed_origins) is not supported by this "
            "hutch server yet; leave out embed_origins",
        )
    row = await find_sandbox(svc, who, name)
    row = await ready_sandbox(svc, who, row.id)
    expires = int(time.time()) + body.expires_in_seconds
    token = svc.tokens.sign(
        TOKEN_KIND, {"sb": row.id, "port": body.port, "ws": row.workspace_id}, expires
    )
    origin, prefix = service_origin(request, svc, row.id, body.port)
    sign_in = (
        f"{origin}{HOST_SIGN_IN}"
        if svc.config.service_domain
        else f"{public_base(request, svc)}{AUTH_PREFIX}/{row.id}/{body.port}"
    )
    return {
        "service_url": f"{origin}{prefix}/",
        "browser_url": f"{sign_in}?token={token}",
        "token": token,
        "expires_at": iso(datetime.fromtimestamp(expires, UTC)),
    }


# -- checking -------------------------------------------------------------------------------------


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ApiError(ErrorType.NOT_FOUND, f"No service URL has port '{text}'; ports are 1-65535")
    return int(text)


async def _authorize(
    svc: Services, token: str | None, sandbox_id: str, port: int
) -> tuple[Sandbox, dict[str, Any]]:
    """The sandbox a valid token for this sandbox and port opens; else the envelope (401, 403,
    404, 400). The token is checked before the sandbox is looked up."""
    if not token:
        raise ApiError(
            ErrorType.UNAUTHORIZED,
            "This service URL needs its token: send the X-Langsmith-Sandbox-Service-Token "
            "header, or open the browser_url first (get both from POST …/service-url)",
        )
    try:
        claims = svc.tokens.verify(token, TOKEN_KIND)
    except TokenError as exc:
        raise ApiError(
            ErrorType.UNAUTHORIZED,
            f"Service token refused ({exc}); get a new one from POST …/service-url",
        ) from exc
    if claims.get("sb") != sandbox_id or claims.get("port") != port:
        raise ApiError(
            ErrorType.FORBIDDEN,
            f"This service token is for port {claims.get('port')} of sandbox "
            f"'{claims.get('sb')}', not port {port} of sandbox '{sandbox_id}'",
        )
    workspace = claims.get("ws")
    if not isinstance(workspace, str):
        raise ApiError(ErrorType.UNAUTHORIZED, "Service token refused (malformed token)")
    who = Principal(key_id="service-url", workspace_id=workspace, is_admin=False)
    return await ready_sandbox(svc, who, sandbox_id), claims


def _token_of(conn: HTTPConnection) -> str | None:
    return conn.headers.get(TOKEN_HEADER) or conn.cookies.get(TOKEN_COOKIE)


def _route(conn: HTTPConnection, svc: Services, sandbox_id: str, port: int) -> Route:
    """Where a request to this service goes, and how its URL looks from the outside."""
    origin, prefix = service_origin(conn, svc, sandbox_id, port)
    return Route(
        sandbox_id=sandbox_id,
        port=port,
        origin=origin,
        public_prefix=prefix,
        local_prefix=f"{PREFIX}/{sandbox_id}/{port}",
        proto="https" if is_https(conn, svc.config.public_url) else "http",
        host=conn.headers.get("host") or urlsplit(origin).netloc,
        client=conn.client.host if conn.client else None,
    )


# -- browser sign-in ------------------------------------------------------------------------------


@router.get(f"{AUTH_PREFIX}/{{sandbox_id}}/{{port}}", include_in_schema=False)
async def browser_sign_in(
    request: Request, sandbox_id: str, port: str, svc: Services = Depends(services)
) -> Response:
    """Trade the token in the query for the service's cookie, and go to the service."""
    number = _port(port)
    token = request.query_params.get("token")
    _, claims = await _authorize(svc, token, sandbox_id, number)
    origin, prefix = service_origin(request, svc, sandbox_id, number)
    response = RedirectResponse(f"{origin}{prefix}/", status_code=303)
    response.set_cookie(
        TOKEN_COOKIE,
        str(token),
        max_age=max(1, int(claims["exp"] - time.time())) if "exp" in claims else None,
        path=prefix + "/",
        secure=is_https(request, svc.config.public_url),
        httponly=True,
        samesite="lax",
    )
    # The URL carried the token: keep it out of caches and of other sites' Referer headers.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


# The proxy routes. The ``{port}`` segment is text so that a bad port gets the envelope.


@router.api_route(f"{PREFIX}/{{sandbox_id}}/{{port}}", methods=METHODS, include_in_schema=False)
async def service_root(request: Request, sandbox_id: str, port: str) -> Response:
    """The bare prefix: on to the root with a slash, so the service's relative links work
    (a relative redirect: right behind any proxy that adds a path in front)."""
    _port(port)
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"{port}/{query}", status_code=308)


@router.api_route(
    f"{PREFIX}/{{sandbox_id}}/{{port}}/{{path:path}}", methods=METHODS, include_in_schema=False
)
async def service_http(
    request: Request, sandbox_id: str, port: str, path: str, svc: Services = Depends(services)
) -> Response:
    number = _port(port)
    row, _ = await _authorize(svc, _token_of(request), sandbox_id, number)
    return _Exchange(svc, row, _route(request, svc, row.id, number))


# -- WebSocket ------------------------------------------------------------------------------------


def _open_sockets(ws: WebSocket) -> dict[str, int]:
    """Open proxied WebSockets per sandbox id, kept with the app."""
    state = ws.app.state
    counts: dict[str, int] | None = getattr(state, "service_websockets", None)
    if counts is None:
        counts = state.service_websockets = {}
    return counts


@router.websocket(f"{PREFIX}/{{sandbox_id}}/{{port}}/{{path:path}}")
async def service_ws(ws: WebSocket, sandbox_id: str, port: str, path: str) -> None:
    svc: Services = ws.app.state.services
    counts = _open_sockets(ws)
    try:
        number = _port(port)
        row, _ = await _authorize(svc, _token_of(ws), sandbox_id, number)
        if counts.get(row.id, 0) >= MAX_WEBSOCKETS:
            raise ApiError(
                ErrorType.QUOTA_EXCEEDED,
                f"Sandbox '{row.name}' has {MAX_WEBSOCKETS} service WebSockets open; close some",
            )
        sock = await _connect(svc, row, number)
    except ApiError as exc:
        await refuse(ws, exc)
        return
    counts[row.id] = counts.get(row.id, 0) + 1
    try:
        reader, writer = await _open(sock)
        try:
            try:
                proto, pending = await _ws_handshake(
                    ws, _route(ws, svc, row.id, number), reader, writer
                )
            except ApiError as exc:
                await refuse(ws, exc)
                return
            await ws.accept(subprotocol=proto.subprotocol)
            await _touch(svc, row.id)
            try:
                await _WsRelay(ws, svc, row, proto, reader, writer).run(pending)
            except* (WebSocketDisconnect, OSError, TimeoutError) as group:
                # A side vanished, or the client stopped taking messages: the relay is over.
                log.debug("service WebSocket to %s:%d ended: %r", row.id, number, group)
        finally:
            writer.transport.abort()
    finally:
        left = counts.get(row.id, 1) - 1
        if left > 0:
            counts[row.id] = left
        else:
            counts.pop(row.id, None)
