"""The HTTP relay of service URLs (see :mod:`._service`): one request to a service inside a sandbox.

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
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlsplit

import h11
from fastapi import Response
from starlette.types import Receive, Scope, Send

from hutch.protocol._errors import ErrorType
from hutch.runtime._interface import SandboxNotFound
from hutch.server._deps import Services
from hutch.server._errors import ApiError, error_response
from hutch.server._websession import COOKIE as UI_COOKIE
from hutch.store import Sandbox

log = logging.getLogger("hutch.server")

# The service token's names live here, where the relay strips them before a service sees
# them; :mod:`._service` issues and checks the token.

#: The header the SDKs' ServiceURL helpers send (spec §2.3), lower case as ASGI has it.
TOKEN_HEADER: Final = "x-langsmith-sandbox-service-token"
#: The cookie ``browser_url`` sets; scoped to one service's path.
TOKEN_COOKIE: Final = "hutch_service_token"
#: Largest read from either side of an HTTP exchange or a WebSocket socket.
CHUNK: Final = 64 * 1024
#: Largest response head (status line and headers) accepted from a service.
MAX_HEAD: Final = 64 * 1024
#: Seconds a service may take to start answering a request (else 504).
RESPONSE_TIMEOUT: Final = 300.0

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
            await error_response(exc.wire)(scope, receive, send)


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
