"""Request bodies: authenticated before they are read, and bounded in size.

FastAPI reads and parses a JSON body before it resolves a route's dependencies, so without this
middleware a client with no API key could make the server buffer a body of any size (a 300 MB
body took it from 100 to 700 MB and stalled every other client). For each HTTP request this
middleware, before a byte of the body is read:

1. **authenticates** a request that carries a body (``Content-Length`` above 0, or
   ``Transfer-Encoding``) to a route that takes the API key or the web UI's cookie, with the
   same check the routes make (:func:`hutch.server._deps.authenticate`): 401/403 in the
   envelope. Routes with their own credential check it themselves before reading a body (the
   service-URL token of ``/svc``, the signed download link) or need none (sign-in, pages);
   requests without a body are left to their route, which answers the same;
2. **refuses** a declared ``Content-Length`` over the route's limit with 413;
3. **counts** the body as it is read (chunked bodies declare no length) and answers 413 as soon
   as it passes the limit, unless the response has started.

Limits: :attr:`ServerConfig.max_body_bytes` for everything (control-plane JSON is small),
:attr:`ServerConfig.max_upload_bytes` plus the multipart framing for ``/dp/{id}/upload`` (the
route checks the file itself against the limit), none for ``/svc`` (relayed to the sandbox's
service as it arrives, never buffered; the service decides what it accepts).

The application never sees a refused body. uvicorn still takes what the client goes on
sending off the socket and drops it, a piece at a time, so that the client can read the answer
and reuse the connection: closing it instead would reset it with the answer possibly unread
(the client is still sending), and a client should learn why, and what to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hutch.protocol._errors import ErrorType, WireError, make_error
from hutch.server._deps import authenticate
from hutch.server._errors import ApiError, error_response

#: Room for the multipart framing around an upload's file (boundaries, part headers).
MULTIPART_OVERHEAD = 64 * 1024

#: Paths whose routes take no API key or UI cookie: their own token, checked by the route before
#: it reads a body (service URLs, signed download links), or no credential at all (health,
#: the API's documentation, the web UI's pages and files, signing in and out).
_OWN_CREDENTIAL = re.compile(
    r"/(?:healthz|openapi\.json|docs(?:/.*)?|redoc|sign-in|templates|snapshots|sandboxes/[^/]+"
    r"|ui/assets/.*|ui/api/session|svc(?:-auth)?/.*|dp/[^/]+/download-link)?"
)
_UPLOAD = re.compile(r"/dp/[^/]+/upload")
_SERVICE = re.compile(r"/svc/.*")


@dataclass(frozen=True)
class _Rule:
    needs_key: bool
    #: Most body bytes, None: unbounded (streamed on, never buffered).
    limit: int | None
    advice: str


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a body passes its limit; the middleware answers 413."""


class BodyLimits:
    """The ASGI middleware (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    def rule(self, method: str, path: str) -> _Rule:
        needs_key = _OWN_CREDENTIAL.fullmatch(path) is None
        if method == "POST" and _UPLOAD.fullmatch(path):
            return _Rule(
                needs_key,
                self.max_upload_bytes + MULTIPART_OVERHEAD,
                f"files up to {self.max_upload_bytes} bytes are accepted: write a bigger file "
                "in parts, or start the server with a larger --max-upload-bytes",
            )
        if _SERVICE.fullmatch(path):
            return _Rule(needs_key, None, "")
        return _Rule(
            needs_key,
            self.max_body_bytes,
            "request bodies here are small JSON documents: send less, or start the server "
            "with a larger --max-body-bytes",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length_header = headers.get("content-length")
        declared = int(length_header) if length_header and length_header.isdigit() else None
        has_body = bool(declared) or "transfer-encoding" in headers
        if not has_body:
            await self.app(scope, receive, send)
            return
        rule = self.rule(scope["method"], scope["path"])
        if rule.needs_key:
            try:
                authenticate(HTTPConnection(scope))
            except ApiError as exc:
                await _refuse(exc.wire, exc.headers, scope, receive, send)
                return
        if rule.limit is not None and declared is not None and declared > rule.limit:
            await _refuse(_too_large(declared, rule), None, scope, receive, send)
            return
        await _Exchange(self.app, rule).run(scope, receive, send)


def _too_large(size: int | None, rule: _Rule) -> WireError:
    amount = f" of {size} bytes" if size is not None else ""
    return make_error(
        ErrorType.PAYLOAD_TOO_LARGE,
        f"Request body{amount} exceeds this server's limit of {rule.limit} bytes; {rule.advice}",
    )


async def _refuse(
    wire: WireError, headers: dict[str, str] | None, scope: Scope, receive: Receive, send: Send
) -> None:
    await error_response(wire, headers)(scope, receive, send)


class _Exchange:
    """One request whose body is counted as the application reads it."""

    def __init__(self, app: ASGIApp, rule: _Rule) -> None:
        self.app = app
        self.rule = rule
        self.received = 0
        self.overflowed = False
        self.started = False  # a response started (the application's or ours)
        self.replaced = False  # we answered 413 instead of the application

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted_receive() -> Message:
            if self.overflowed:
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.rule.limit is not None and self.received > self.rule.limit:
                    self.overflowed = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if self.replaced:
                return  # what the application still sends after our 413
            if message["type"] == "http.response.start":
                if self.overflowed:
                    # The application answered the failed read (e.g. FastAPI's 400 for an
                    # unreadable body): the truth is that the body was too large.
                    await self._answer_too_large(scope, receive, send)
                    return
                self.started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:
            # Past the limit after a response started (no route does that but the service
            # relay, which has none): the response is cut off, which the client sees.
            if not self.started:
                await self._answer_too_large(scope, receive, send)

    async def _answer_too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.started = self.replaced = True
        # Only a body of undeclared length (chunked) gets here: uvicorn ends a declared one at
        # its Content-Length, which was within the limit.
        await _refuse(_too_large(None, self.rule), None, scope, receive, send)
