"""The hutch server: FastAPI application and its lifespan."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from hutch.protocol._errors import ErrorType, make_error
from hutch.runtime._backend import load_runtime
from hutch.runtime.images import ImageStore
from hutch.server import (
    _control,
    _dataplane,
    _errors,
    _files,
    _observe,
    _registries,
    _secrets,
    _service,
    _snapshots,
    _sse_exec,
    _tunnel,
    _ui,
    _unimplemented,
    _ws_exec,
)
from hutch.server._auth import KeyRing
from hutch.server._config import ServerConfig
from hutch.server._deps import Services
from hutch.server._limits import BodyLimits
from hutch.server._manager import SandboxManager
from hutch.server._metrics import Metrics
from hutch.server._openapi import EnvelopedAPI
from hutch.server._service import AUTH_PREFIX, HOST_SIGN_IN, PREFIX, service_host
from hutch.server._tokens import TokenSigner
from hutch.sessions import SessionManager
from hutch.store import Database

log = logging.getLogger("hutch.server")

#: Control-plane prefixes: template-era SDKs use /v2/sandboxes, 0.15 and the hosted docs use
#: /api/v2/sandboxes, and template-era users with an endpoint ending in /api/v1 reach
#: /api/v1/v2/sandboxes (spec §1.2).
CONTROL_PREFIXES = ("/v2/sandboxes", "/api/v2/sandboxes", "/api/v1/v2/sandboxes")


class _DenialIsNotAnError(logging.Filter):
    """uvicorn logs an upgrade refused with an HTTP status (auth, unknown sandbox) as
    "returned without completing handshake"; for us that refusal is the intended answer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing handshake" not in record.getMessage()


class _SplitOrigins:
    """With a service listener (``--service-port``), each listener serves only its own paths:
    the service port only ``/svc``/``/svc-auth`` (a service's pages never share an origin with
    the API or the web UI, whose session they could otherwise use), the API port everything else.

    With ``--service-domain`` the service port serves each service on a host of its own,
    ``<id>-<port>.<domain>``: the request is routed by its ``Host`` (its path becomes the
    service's ``/svc/<id>/<port>/…``), and nothing is served there by path alone.
    """

    def __init__(self, app: ASGIApp, service_port: int, service_domain: str | None) -> None:
        self.app = app
        self.service_port = service_port
        self.service_domain = service_domain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            server = scope.get("server")
            on_service = server is not None and server[1] == self.service_port
            path = scope["path"]
            if on_service and self.service_domain and path != "/healthz":
                if not self._route_by_host(scope):
                    await self._refuse(
                        scope,
                        receive,
                        send,
                        f"No such endpoint: {path} (this port serves each service at its own "
                        f"host, <sandbox id>-<port>.{self.service_domain}: use the service_url)",
                    )
                    return
            else:
                is_service = path in ("/svc", "/svc-auth") or path.startswith(
                    ("/svc/", "/svc-auth/")
                )
                if on_service != is_service and path != "/healthz":
                    where = (
                        f"service URLs are served on port {self.service_port}, their own origin"
                        if is_service
                        else "this port serves service URLs only; use the API's port"
                    )
                    await self._refuse(scope, receive, send, f"No such endpoint: {path} ({where})")
                    return
        await self.app(scope, receive, send)

    def _route_by_host(self, scope: Scope) -> bool:
        """Rewrite a request to ``<id>-<port>.<domain>`` as one to that service's path."""
        host = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1")
        named = service_host(self.service_domain or "", host)
        if named is None:
            return False
        sandbox_id, port = named
        path = scope["path"]
        if path == HOST_SIGN_IN:
            prefix, rest = f"{AUTH_PREFIX}/{sandbox_id}/{port}", ""
        else:
            prefix, rest = f"{PREFIX}/{sandbox_id}/{port}", path
        scope["path"] = prefix + rest
        raw = scope.get("raw_path")
        if isinstance(raw, bytes):
            scope["raw_path"] = prefix.encode() + (raw if rest else b"")
        return True

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, message: str) -> None:
        wire = make_error(ErrorType.NOT_FOUND, message)
        if scope["type"] == "http":
            await _errors.error_response(wire)(scope, receive, send)
        else:
            await send({"type": "websocket.close", "code": 1008})


def create_app(config: ServerConfig) -> FastAPI:
    metrics = Metrics()  # this application's own registry

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logging.getLogger("uvicorn.error").addFilter(_DenialIsNotAnError())
        config.data_dir.mkdir(parents=True, exist_ok=True)
        config.data_dir.chmod(0o700)
        db = (
            Database(config.database_url)
            if config.database_url
            else Database.in_dir(config.data_dir)
        )
        await db.migrate()
        keys = KeyRing(db)
        written = await keys.bootstrap(config.data_dir)
        if written:
            print(f"hutch: generated the first API key; it is in {written}", flush=True)
        images = ImageStore(config.data_dir / "images")
        runtime = load_runtime(
            config.runtime, config.data_dir, default_storage_bytes=config.default_storage_bytes
        )
        sessions = SessionManager(log_budget=config.session_log_budget)
        manager = SandboxManager(db, runtime, images, config, sessions, metrics)
        manager.pulls.on_outcome = metrics.image_pull
        await manager.reconcile()
        manager.start_reaper()
        svc = Services(
            config,
            db,
            keys,
            images,
            runtime,
            manager,
            sessions,
            manager.sockets,
            tokens=TokenSigner.in_dir(config.data_dir),
        )
        app.state.services = svc
        key_watch = asyncio.create_task(keys.watch(), name="key-watch")
        try:
            yield
        finally:
            key_watch.cancel()
            await _ws_exec.close_all(svc)
            await sessions.aclose()
            await manager.aclose()
            await runtime.aclose()
            await db.aclose()

    # The envelope for every error, even Starlette's own, and an OpenAPI document that says so.
    app = EnvelopedAPI(title="hutch", version="0.1.0", lifespan=lifespan, redirect_slashes=False)
    app.outermost = functools.partial(_observe.Observe, metrics=metrics)
    _errors.install(app)
    for prefix in CONTROL_PREFIXES:
        app.include_router(_control.router, prefix=prefix)
        app.include_router(_snapshots.router, prefix=prefix)
        app.include_router(_registries.router, prefix=prefix)
        app.include_router(_secrets.router, prefix=prefix)
        for extra in (_files, _service, _sse_exec):
            app.include_router(extra.control_router, prefix=prefix)
        app.include_router(_unimplemented.router, prefix=prefix)
    app.include_router(_dataplane.router)
    for extra in (_files, _service, _sse_exec):
        app.include_router(extra.router)
    app.include_router(_ws_exec.router)
    app.include_router(_tunnel.router)
    app.include_router(_observe.router)
    _ui.install(app)
    if config.service_port is not None:
        app.add_middleware(
            _SplitOrigins,
            service_port=config.service_port,
            service_domain=config.service_domain,
        )
    # Outermost: no other layer may read a body before it is authenticated and bounded.
    app.add_middleware(
        BodyLimits,
        max_body_bytes=config.max_body_bytes,
        max_upload_bytes=config.max_upload_bytes,
    )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
