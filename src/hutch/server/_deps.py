"""Request-scoped access to the server's services."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from fastapi import Request, WebSocket
from starlette.requests import HTTPConnection

from hutch.runtime._interface import Runtime
from hutch.runtime.images import ImageStore
from hutch.server._auth import KeyRing, Principal
from hutch.server._config import ServerConfig
from hutch.server._logs import note_workspace
from hutch.server._manager import SandboxManager
from hutch.server._tokens import TokenSigner
from hutch.server._websession import COOKIE, SAFE_METHODS, WebSessions, cookie_principal
from hutch.sessions import SessionManager
from hutch.store import Database


@dataclass
class Services:
    config: ServerConfig
    db: Database
    keys: KeyRing
    images: ImageStore
    runtime: Runtime
    manager: SandboxManager
    sessions: SessionManager
    #: Open exec/tunnel sockets, closed with 1012 on shutdown.
    sockets: set[WebSocket] = field(default_factory=set)
    #: The web UI's sign-in sessions (cookie tokens).
    web_sessions: WebSessions = field(default_factory=WebSessions)
    #: Signs service-URL and download-URL tokens (key kept in the data dir).
    tokens: TokenSigner = field(default_factory=lambda: TokenSigner(secrets.token_bytes(32)))


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def authenticate(conn: HTTPConnection) -> Principal:
    """``X-Api-Key``, else the web UI's session cookie (state changes and WebSocket upgrades
    with the cookie must come from the server's own origin)."""
    svc: Services = conn.app.state.services
    key = conn.headers.get("x-api-key")
    if key is None and COOKIE in conn.cookies:
        websocket = conn.scope["type"] == "websocket"
        who = cookie_principal(
            conn,
            svc.web_sessions,
            svc.keys,
            svc.config.public_url,
            changes_state=websocket or conn.scope["method"] not in SAFE_METHODS,
        )
    else:
        who = svc.keys.authenticate(key)
    note_workspace(who.workspace_id)  # for the request's log line
    return who


def principal(request: Request) -> Principal:
    return authenticate(request)


def dataplane_base(request: Request) -> str:
    svc: Services = request.app.state.services
    base = svc.config.public_url or str(request.base_url)
    return base.rstrip("/") + "/dp"
