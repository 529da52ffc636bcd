"""Request-scoped access to the server's services."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request, WebSocket

from hutch.runtime._interface import Runtime
from hutch.runtime.images import ImageStore
from hutch.server._auth import KeyRing, Principal
from hutch.server._config import ServerConfig
from hutch.server._manager import SandboxManager
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


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def principal(request: Request) -> Principal:
    svc: Services = request.app.state.services
    return svc.keys.authenticate(request.headers.get("x-api-key"))


def dataplane_base(request: Request) -> str:
    svc: Services = request.app.state.services
    base = svc.config.public_url or str(request.base_url)
    return base.rstrip("/") + "/dp"
