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

**HTTP** (:class:`_Exchange`, :func:`relay_http`): one upstream connection per request, spoken with
h11 (HTTP/1.1, ``Connection: close``). The path loses its ``/svc/<id>/<port>`` prefix; hop-by-hop
headers, the token header, ``X-Api-Key``, and the token and web-UI cookies are dropped, and
``X-Forwarded-For/-Proto/-Host/-Prefix`` are set. The original ``Host`` is kept (services compare
it with ``Origin``). Bodies stream both ways: at most one :data:`CHUNK` of each direction is held
here, and ``drain()``/the ASGI ``send`` push back. On the way back, redirects and cookies are kept
inside the service's prefix (``Location``, ``Set-Cookie`` ``Path``/``Domain``), and headers that
act on the whole origin (``Service-Worker-Allowed``, ``Strict-Transport-Security``,
``Clear-Site-Data``, ``Alt-Svc``, ``NEL``, ``Report-To``) are dropped. Nothing listening answers
502, no response head within :data:`RESPONSE_TIMEOUT` answers 504, both in the error envelope.

**WebSocket** (:class:`_WsRelay`): an upgrade on the same paths is relayed to a WebSocket
connection to the service (websockets' sans-I/O client over the socket from ``connect``), message
by message, text and binary, subprotocol negotiated end to end, close codes passed on (codes that
may not go on the wire become 1000, or 1014 when the service vanished). One message per direction
is in flight (at most :data:`MAX_WS_MESSAGE` bytes); at most :data:`MAX_WEBSOCKETS` per sandbox.

Activity: an HTTP exchange marks the sandbox busy while it runs (``manager.active``); WebSocket
messages count as activity (``manager.touch``), an idle open socket does not.

By default every service of every sandbox is served from the service listener's origin, under its
own path. Path scoping keeps cookies and redirects apart, but it is not a browser security
boundary. With ``--service-domain`` each service is served at a host of its own
(``<id>-<port>.<domain>``, routed by ``_app._SplitOrigins``), with no path prefix: an origin per
service, which is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final
from urllib.parse import quote, urlsplit

import h11
from fastapi import APIRouter, Depends, Request, Response, WebSocket
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Response as WsResponse
from websockets.protocol import State
from websockets.uri import parse_uri

from hutch.protocol._errors import ErrorType
from hutch.runtime._interface import SandboxNotFound
from hutch.server._auth import Principal
from hutch.server._control import _sandbox as find_sandbox
from hutch.server._dataplane import ready_sandbox
from hutch.server._deps import Services, principal, services
from hutch.server._errors import ApiError
from hutch.server._schemas import iso
from hutch.server._tokens import TokenError
from hutch.server._websession import COOKIE as UI_COOKIE
from hutch.server._websession import is_https
from hutch.server._ws import refuse
from hutch.store import Sandbox

log = logging.getLogger("hutch.server")

#: Data-plane routes (under /dp/{sandbox_id}).
router = APIRouter()
#: Control-plane routes (mounted under every control prefix).
control_router = APIRouter()

TOKEN_KIND: Final = "service"
#: The header the SDKs' ServiceURL helpers send (spec §2.3), lower case as ASGI has it.
TOKEN_HEADER: Final = "x-langsmith-sandbox-service-token"
#: The cookie ``browser_url`` sets; scoped to one service's path.
TOKEN_COOKIE: Final = "hutch_service_token"
PREFIX: Final = "/svc"
AUTH_PREFIX: Final = "/svc-auth"
#: The browser sign-in on a service's own host (``--service-domain``): a path no app is likely
#: to need, answered by hutch, never passed to the service.
HOST_SIGN_IN: Final = "/.hutch/sign-in"
DEFAULT_EXPIRES: Final = 600
MAX_EXPIRES: Final = 86400
#: Largest read from either side of an HTTP exchange or a WebSocket socket.
CHUNK: Final = 64 * 1024
#: Largest response head (status line and headers) accepted from a service.
MAX_HEAD: Final = 64 * 1024
#: Seconds a service may take to start answering a request (else 504).
RESPONSE_TIMEOUT: Final = 300.0
#: Seconds a service may take to answer a WebSocket handshake (else 504).
HANDSHAKE_TIMEOUT: Final = 30.0
#: Largest WebSocket message relayed, either way (the server's own limit for incoming messages).
MAX_WS_MESSAGE: Final = 16 * 1024 * 1024
#: Seconds one relayed WebSocket message may take to be taken by the other side.
WS_SEND_TIMEOUT: Final = 60.0
#: Open proxied WebSockets per sandbox; more are refused with 429.
MAX_WEBSOCKETS: Final = 256
METHODS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

#: Request headers never passed to a service: hop-by-hop ones (RFC 9110 §7.6.1), hutch's
#: credentials, forwarding headers a client could forge (set here instead), and ``Expect``
#: (uvicorn already answered it).
_DROP_REQUEST: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"expect",
        b"x-api-key",
        TOKEN_HEADER.encode(),
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-prefix",
        b"x-forwarded-port",
        b"x-real-ip",
    }
)
#: Headers of the WebSocket handshake itself: the client's are the browser's, the upstream's are
#: made by websockets.
_WS_HANDSHAKE: Final = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
        b"origin",
    }
)
#: Response headers never passed back: hop-by-hop ones; ``Date`` and ``Server``, which uvicorn
#: adds itself (no duplicates); and those that act on the whole origin (which is hutch's, and
#: every other service's): a service worker scope beyond the service's path, HSTS, wiping the
#: origin's storage and cookies, alternative services, origin-wide network error logging.
_DROP_RESPONSE: Final = frozenset(
    {
        b"date",
        b"server",
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"service-worker-allowed",
        b"strict-transport-security",
        b"clear-site-data",
        b"alt-svc",
        b"nel",
        b"report-to",
    }
)
#: Close codes that may be sent in a close frame (RFC 6455 §7.4); others are replaced.
_SENDABLE_CLOSE = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)})
_CLOSE_NORMAL: Final = 1000
_CLOSE_GOING_AWAY: Final = 1001
_CLOSE_INVALID_DATA: Final = 1007
_CLOSE_BAD_GATEWAY: Final = 1014


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


async def _connect(svc: Services, row: Sandbox, port: int) -> socket.socket:
    """A socket to ``127.0.0.1:port`` in the sandbox's network namespace; else the envelope."""
    try:
        return await svc.runtime.connect(row.id, port)
    except SandboxNotFound as exc:
        raise ApiError(
            ErrorType.NOT_READY,
            f"Sandbox '{row.name}' is not running; start it, or delete it and create a new one",
        ) from exc
    except ConnectionRefusedError as exc:
        raise ApiError(
            ErrorType.NOT_READY,
            f"Nothing listens on port {port} in sandbox '{row.name}'; start your service "
            f"(listening on 127.0.0.1:{port} or 0.0.0.0:{port} inside the sandbox)",
            status=502,
        ) from exc
    except TimeoutError as exc:
        raise ApiError(
            ErrorType.TIMEOUT,
            f"Port {port} in sandbox '{row.name}' did not accept the connection in time; "
            "the service may be overloaded",
            status=504,
        ) from exc
    except OSError as exc:
        raise ApiError(
            ErrorType.NOT_READY,
            f"Could not connect to port {port} in sandbox '{row.name}': {exc.strerror or exc}",
            status=502,
        ) from exc


async def _touch(svc: Services, sandbox_id: str) -> None:
    try:
        await svc.manager.touch(sandbox_id)
    except Exception:  # activity bookkeeping must not break a connection
        log.warning("could not record service activity for %s", sandbox_id, exc_info=True)


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


# -- HTTP -----------------------------------------------------------------------------------------


def _strip_cookies(value: bytes) -> bytes | None:
    """A ``Cookie`` header without hutch's cookies (None when nothing is left)."""
    kept = []
    for part in value.split(b";"):
        name = part.split(b"=", 1)[0].strip()
        if name and name not in (TOKEN_COOKIE.encode(), UI_COOKIE.encode()):
            kept.append(part.strip())
    return b"; ".join(kept) if kept else None


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in ``Connection`` (hop-by-hop for this connection only)."""
    names: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            names.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return names


@dataclass(frozen=True)
class Route:
    """Where one proxied request goes, and how the service's URL looks from the outside."""

    sandbox_id: str
    port: int
    #: ``scheme://host[:port]`` of the public base.
    origin: str
    #: The service's prefix as clients see it (with ``--public-url``'s path), and as this
    #: server receives it; neither has a trailing slash.
    public_prefix: str
    local_prefix: str
    #: ``http`` or ``https``, as the client spoke to us (or ``--public-url`` says).
    proto: str
    #: The ``Host`` the client sent (passed on as is).
    host: str
    #: The client's address, for ``X-Forwarded-For``.
    client: str | None

    @classmethod
    def of(cls, conn: HTTPConnection, svc: Services, sandbox_id: str, port: int) -> Route:
        origin, prefix = service_origin(conn, svc, sandbox_id, port)
        return cls(
            sandbox_id=sandbox_id,
            port=port,
            origin=origin,
            public_prefix=prefix,
            local_prefix=f"{PREFIX}/{sandbox_id}/{port}",
            proto="https" if is_https(conn, svc.config.public_url) else "http",
            host=conn.headers.get("host") or urlsplit(origin).netloc,
            client=conn.client.host if conn.client else None,
        )

    def target(self, scope: Scope) -> bytes:
        """The request target for the service: the path without the prefix, and the query."""
        raw = scope.get("raw_path")
        local = self.local_prefix.encode()
        if isinstance(raw, bytes) and raw.startswith(local + b"/"):
            path = raw[len(local) :]
        else:  # the client spelled the prefix differently (percent-encoded): re-encode
            rest = str(scope["path"])[len(self.local_prefix) :] or "/"
            path = quote(rest, safe="/:@!$&'()*+,;=~").encode()
        query = scope.get("query_string") or b""
        return path + (b"?" + query if query else b"")

    def request_headers(
        self, headers: Iterable[tuple[bytes, bytes]], *, websocket: bool = False
    ) -> list[tuple[bytes, bytes]]:
        """What the service gets: end-to-end headers minus hutch's credentials, plus
        forwarding headers (Host first, as HTTP/1.1 wants it)."""
        headers = list(headers)
        drop = _DROP_REQUEST | _connection_tokens(headers) | (_WS_HANDSHAKE if websocket else set())
        out: list[tuple[bytes, bytes]] = [(b"host", self.host.encode("latin-1"))]
        for name, value in headers:
            name = name.lower()
            if name in drop:
                continue
            if name == b"cookie":
                stripped = _strip_cookies(value)
                if stripped is not None:
                    out.append((name, stripped))
            else:
                out.append((name, value))
        if self.client:
            # The client as this server sees it: uvicorn already took X-Forwarded-For from a
            # proxy it trusts (--forwarded-allow-ips); anything else a client wrote is dropped.
            out.append((b"x-forwarded-for", self.client.encode()))
        out += [
            (b"x-forwarded-proto", self.proto.encode()),
            (b"x-forwarded-host", self.host.encode("latin-1")),
            (b"x-forwarded-prefix", self.public_prefix.encode()),
        ]
        return out

    def location(self, value: bytes) -> bytes:
        """A redirect of the service, kept inside its prefix (as nginx's proxy_redirect)."""
        text = value.decode("latin-1")
        prefix = self.public_prefix
        if text.startswith("/") and not text.startswith("//"):
            if text == prefix or text.startswith(prefix + "/"):
                return value
            return (prefix + text).encode("latin-1")
        parts = urlsplit(text)
        upstream = {f"127.0.0.1:{self.port}", f"localhost:{self.port}", self.host.lower()}
        if parts.scheme in ("http", "https") and parts.netloc.lower() in upstream:
            path = parts.path or "/"
            if not (path == prefix or path.startswith(prefix + "/")):
                path = prefix + path
            rest = (f"?{parts.query}" if parts.query else "") + (
                f"#{parts.fragment}" if parts.fragment else ""
            )
            return f"{self.origin}{path}{rest}".encode("latin-1")
        return value

    def set_cookie(self, value: bytes) -> bytes:
        """A cookie of the service, scoped to its prefix and to this host only."""
        first, *attrs = value.split(b";")
        kept = [first]
        for attr in attrs:
            key, _, val = attr.strip().partition(b"=")
            key = key.lower()
            if key == b"domain":
                continue
            if key == b"path":
                path = val.strip().decode("latin-1")
                if not path.startswith("/"):
                    path = "/"
                if not (path == self.public_prefix or path.startswith(self.public_prefix + "/")):
                    path = self.public_prefix + path
                kept.append(b" Path=" + path.encode("latin-1"))
                continue
            kept.append(b" " + attr.strip())
        return b";".join(kept)

    def response_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        headers = list(headers)
        drop = _DROP_RESPONSE | _connection_tokens(headers)
        out = []
        for name, value in headers:
            name = name.lower()
            if name in drop:
                continue
            if name == b"location":
                value = self.location(value)
            elif name == b"set-cookie":
                value = self.set_cookie(value)
            out.append((name, value))
        return out


class _ClientGone(Exception):
    """The client went away before the response was complete."""


class _Exchange(Response):
    """One request relayed to the service over a connection of its own (see the module
    docstring). The endpoint checks the token and returns it; calling it (as an ASGI app)
    connects, relays, and owns the connection until it returns."""

    def __init__(self, svc: Services, row: Sandbox, route: Route) -> None:
        super().__init__()
        self.svc = svc
        self.row = row
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with self.svc.manager.active(self.row.id):
                sock = await _connect(self.svc, self.row, self.route.port)
                reader, writer = await _open(sock)
                try:
                    await relay_http(
                        scope, receive, send, reader, writer, self.route, self.row.name
                    )
                finally:
                    writer.transport.abort()  # Connection: close; nothing more to say
        except ApiError as exc:  # raised only before the response started
            await JSONResponse(exc.wire.envelope(), status_code=exc.wire.status)(
                scope, receive, send
            )


async def _open(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_connection(sock=sock, limit=CHUNK)
    except BaseException:
        sock.close()
        raise


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    """The next h11 event, reading from the service as needed (EOF included)."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(CHUNK))


async def relay_http(
    scope: Scope,
    receive: Receive,
    send: Send,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    route: Route,
    name: str,
    *,
    response_timeout: float = RESPONSE_TIMEOUT,
) -> None:
    """Relay one request to the service on (reader, writer) and its response back.

    Raises :class:`ApiError` (502, 504) only before the response started; afterwards a failing
    service or client just ends the exchange (the client sees a cut-off response).
    """
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    incoming: list[tuple[bytes, bytes]] = list(scope["headers"])
    headers = route.request_headers(incoming)
    names = {n.lower() for n, _ in incoming}
    if b"content-length" not in names and b"transfer-encoding" in names:
        headers.append((b"transfer-encoding", b"chunked"))  # length unknown: chunk it on
    headers.append((b"connection", b"close"))
    method = str(scope["method"]).encode()
    try:
        request = h11.Request(method=method, target=route.target(scope), headers=headers)
    except h11.LocalProtocolError as exc:
        raise ApiError(ErrorType.VALIDATION, f"Cannot forward this request: {exc}") from exc
    writer.write(conn.send(request) or b"")
    port = route.port

    async def pump() -> None:
        """Client → service, then wait for the client to disconnect (raises _ClientGone)."""
        sending = True
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            if not sending:
                continue
            try:
                body = message.get("body", b"")
                if body:
                    writer.write(conn.send(h11.Data(data=body)) or b"")
                    await writer.drain()
                if not message.get("more_body", False):
                    writer.write(conn.send(h11.EndOfMessage()) or b"")
                    await writer.drain()
                    sending = False
            except (OSError, h11.LocalProtocolError):
                # The service stopped reading (it may have answered already): the response,
                # or its absence, tells the client.
                sending = False

    try:
        async with asyncio.TaskGroup() as tg:
            pumping = tg.create_task(pump())
            try:
                async with asyncio.timeout(response_timeout):
                    head = await _next_event(conn, reader)
                    while isinstance(head, h11.InformationalResponse):  # 100, 103: not relayed
                        head = await _next_event(conn, reader)
            except TimeoutError as exc:
                raise ApiError(
                    ErrorType.TIMEOUT,
                    f"The service on port {port} in sandbox '{name}' did not answer within "
                    f"{response_timeout:.0f} s",
                    status=504,
                ) from exc
            except (h11.RemoteProtocolError, OSError) as exc:
                raise ApiError(
                    ErrorType.NOT_READY,
                    f"The service on port {port} in sandbox '{name}' closed the connection "
                    f"without a valid HTTP answer ({exc})",
                    status=502,
                ) from exc
            if not isinstance(head, h11.Response):
                raise ApiError(
                    ErrorType.NOT_READY,
                    f"The service on port {port} in sandbox '{name}' sent no HTTP answer",
                    status=502,
                )
            await send(
                {
                    "type": "http.response.start",
                    "status": head.status_code,
                    "headers": route.response_headers(head.headers),
                }
            )
            while True:
                try:
                    event = await _next_event(conn, reader)
                except (h11.RemoteProtocolError, OSError) as exc:
                    log.debug("service %s:%d: response cut off: %s", route.sandbox_id, port, exc)
                    break
                if isinstance(event, h11.Data):
                    await send(
                        {"type": "http.response.body", "body": bytes(event.data), "more_body": True}
                    )
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    break
            pumping.cancel()
    except* _ClientGone:
        pass
    except* ApiError as group:  # before the response started: the caller sends the envelope
        raise group.exceptions[0] from None


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
    return _Exchange(svc, row, Route.of(request, svc, row.id, number))


# -- WebSocket ------------------------------------------------------------------------------------


def _sendable(code: int | None, fallback: int) -> int:
    return code if code is not None and code in _SENDABLE_CLOSE else fallback


class _WsRelay:
    """One WebSocket relayed between a client and the service (see the module docstring)."""

    def __init__(
        self,
        ws: WebSocket,
        svc: Services,
        row: Sandbox,
        proto: ClientProtocol,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.ws = ws
        self.svc = svc
        self.row = row
        self.proto = proto
        self.reader = reader
        self.writer = writer
        #: Fragments of the message being received from the service.
        self._parts: list[bytes] = []
        self._opcode: Opcode | None = None

    async def flush(self) -> None:
        for data in self.proto.data_to_send():
            if data:
                self.writer.write(data)
            elif self.writer.can_write_eof():
                self.writer.write_eof()
        await self.writer.drain()

    async def run(self, pending: list[Any]) -> None:
        """Relay until either side closes; ``pending`` are events that came with the handshake."""
        tasks: list[asyncio.Task[None]] = []

        async def side(work: Any) -> None:
            try:
                await work
            finally:  # either side ending ends the other
                for task in tasks:
                    if task is not asyncio.current_task():
                        task.cancel()

        async with asyncio.TaskGroup() as tg:
            tasks.append(tg.create_task(side(self._from_service(pending))))
            tasks.append(tg.create_task(side(self._from_client())))

    async def _from_client(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                code = int(message.get("code") or _CLOSE_NORMAL)
                with contextlib.suppress(InvalidState, OSError):
                    self.proto.send_close(
                        _sendable(code, _CLOSE_GOING_AWAY), str(message.get("reason") or "")
                    )
                    await self.flush()
                return
            text = message.get("text")
            try:
                if text is not None:
                    self.proto.send_text(text.encode())
                else:
                    self.proto.send_binary(message.get("bytes") or b"")
            except InvalidState:
                return  # the service is closing: its close frame ends the relay
            await self.flush()
            await _touch(self.svc, self.row.id)

    async def _from_service(self, pending: list[Any]) -> None:
        events = pending
        while True:
            for event in events:
                if isinstance(event, Frame) and await self._frame(event):
                    await self.flush()  # the echo of the service's close
                    return
            await self.flush()  # pongs
            if self.proto.state is State.CLOSED or self.proto.parser_exc is not None:
                # The service broke the protocol (a message too big, a bad frame): the protocol
                # told it why; the client gets the same code.
                sent = self.proto.close_sent
                await self._close_client(
                    _sendable(sent.code if sent else None, _CLOSE_BAD_GATEWAY),
                    "the service's connection failed",
                )
                return
            data = await self.reader.read(CHUNK)
            if data:
                self.proto.receive_data(data)
            else:
                self.proto.receive_eof()
                if self.proto.close_rcvd is None:
                    await self._close_client(_CLOSE_BAD_GATEWAY, "the service went away")
                    return
            events = self.proto.events_received()

    async def _frame(self, frame: Frame) -> bool:
        """Handle one frame from the service; True once the service closed."""
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self._opcode = frame.opcode
            self._parts = [bytes(frame.data)]
        elif frame.opcode is Opcode.CONT:
            self._parts.append(bytes(frame.data))
        elif frame.opcode is Opcode.CLOSE:
            close = self.proto.close_rcvd
            code = close.code if close is not None else _CLOSE_NORMAL
            await self._close_client(
                _sendable(code, _CLOSE_NORMAL), close.reason if close is not None else ""
            )
            return True
        else:
            return False  # PING (answered by the protocol), PONG
        if frame.fin:
            data = b"".join(self._parts)
            self._parts = []
            async with asyncio.timeout(WS_SEND_TIMEOUT):
                if self._opcode is Opcode.TEXT:
                    try:
                        text = data.decode()
                    except UnicodeDecodeError:
                        with contextlib.suppress(InvalidState):
                            self.proto.send_close(_CLOSE_INVALID_DATA, "invalid UTF-8")
                        await self._close_client(
                            _CLOSE_INVALID_DATA, "invalid UTF-8 from the service"
                        )
                        return True
                    await self.ws.send_text(text)
                else:
                    await self.ws.send_bytes(data)
            await _touch(self.svc, self.row.id)
        return False

    async def _close_client(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.ws.close(code, reason[:120])


async def _ws_handshake(
    ws: WebSocket, route: Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[ClientProtocol, list[Any]]:
    """Open the WebSocket to the service; its protocol and the events after the handshake.
    Raises :class:`ApiError` (502, 504) when the service does not take it."""
    subprotocols = list(ws.scope.get("subprotocols") or [])
    proto = ClientProtocol(
        parse_uri(f"ws://127.0.0.1:{route.port}/"),
        origin=None,
        subprotocols=subprotocols or None,
        max_size=MAX_WS_MESSAGE,
    )
    request = proto.connect()
    request.path = route.target(ws.scope).decode("latin-1")
    ours = {k.lower(): v for k, v in request.headers.raw_items() if k.lower() != "host"}
    headers = Headers()
    for raw_name, raw_value in route.request_headers(ws.scope["headers"], websocket=True):
        headers[raw_name.decode("latin-1")] = raw_value.decode("latin-1")
    origin = ws.headers.get("origin")
    if origin is not None:  # the browser's origin: the service may check it against Host
        headers["Origin"] = origin
    for key, text in ours.items():
        headers[key] = text
    request.headers = headers
    proto.send_request(request)
    port, name = route.port, route.sandbox_id
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            for data in proto.data_to_send():
                writer.write(data)
            await writer.drain()
            while True:
                data = await reader.read(CHUNK)
                if data:
                    proto.receive_data(data)
                else:
                    proto.receive_eof()
                events = proto.events_received()
                if events:
                    break
                if not data:
                    raise ConnectionResetError("closed during the handshake")
    except TimeoutError as exc:
        raise ApiError(
            ErrorType.TIMEOUT,
            f"The service on port {port} in sandbox '{name}' did not answer the WebSocket "
            f"handshake within {HANDSHAKE_TIMEOUT:.0f} s",
            status=504,
        ) from exc
    except OSError as exc:
        raise ApiError(
            ErrorType.NOT_READY,
            f"The service on port {port} in sandbox '{name}' closed the connection during the "
            "WebSocket handshake",
            status=502,
        ) from exc
    response = events[0]
    if proto.handshake_exc is not None or not isinstance(response, WsResponse):
        status = response.status_code if isinstance(response, WsResponse) else None
        raise ApiError(
            ErrorType.NOT_READY,
            f"The service on port {port} in sandbox '{name}' refused the WebSocket"
            + (f" (HTTP {status})" if status else f": {proto.handshake_exc}"),
            status=502,
        )
    return proto, events[1:]


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
                    ws, Route.of(ws, svc, row.id, number), reader, writer
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
