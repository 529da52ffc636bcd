"""The web UI: its pages and files, sign-in and sign-out, and the few reads only the UI needs.

Pages (``/``, ``/templates``, ``/sandboxes/<name>``) are one HTML file whose script draws the
page; without a session they redirect to ``/sign-in``. The script calls the control-plane API
(``/api/v2/sandboxes/...``) and opens ``/dp/<id>/execute/ws`` with the session cookie, plus the
``/ui/api/...`` routes here. The files under ``/ui/assets`` are the built bundle
(``make ui``), the same for everyone, so they need no session.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, StrictStr

from hutch.protocol._errors import ErrorType
from hutch.server._auth import Principal, hash_key
from hutch.server._control import _sandbox as find_sandbox
from hutch.server._control import workspace_sandboxes
from hutch.server._deps import Services, dataplane_base, principal, services
from hutch.server._errors import ApiError
from hutch.server._schemas import iso, sandbox_json
from hutch.server._websession import COOKIE, check_origin, is_https, session_principal
from hutch.sessions import CommandSession
from hutch.store import Sandbox, Workspace

STATIC = Path(__file__).resolve().parent.parent / "web" / "static"
#: Pages are the same HTML; the script routes. Content-Security-Policy: our own files only;
#: xterm.js adds <style> elements, hence 'unsafe-inline' for styles (never for scripts).
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

router = APIRouter(include_in_schema=False)


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_key: StrictStr


def _page() -> Response:
    index = STATIC / "index.html"
    if not index.is_file():
        raise ApiError(
            ErrorType.INTERNAL,
            "The web UI is not built into this installation; run `make ui` "
            "(needs node and npm) in the source tree, then restart the server",
            status=503,
        )
    return FileResponse(index, media_type="text/html", headers=PAGE_HEADERS)


def _signed_in(request: Request, svc: Services) -> bool:
    return session_principal(request, svc.web_sessions, svc.keys) is not None


def _app_page(request: Request, svc: Services) -> Response:
    if _signed_in(request, svc):
        return _page()
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/sign-in?next={quote(target, safe='')}", status_code=303)


@router.get("/")
async def home(request: Request, svc: Services = Depends(services)) -> Response:
    return _app_page(request, svc)


@router.get("/templates")
async def templates_page(request: Request, svc: Services = Depends(services)) -> Response:
    return _app_page(request, svc)


@router.get("/snapshots")
async def snapshots_page(request: Request, svc: Services = Depends(services)) -> Response:
    return _app_page(request, svc)


@router.get("/sandboxes/{name}")
async def sandbox_page(name: str, request: Request, svc: Services = Depends(services)) -> Response:
    return _app_page(request, svc)


@router.get("/sign-in")
async def sign_in_page(request: Request, svc: Services = Depends(services)) -> Response:
    if _signed_in(request, svc):
        target = request.query_params.get("next", "/")
        local = target.startswith("/") and not target.startswith(("//", "/\\"))
        return RedirectResponse(target if local else "/", status_code=303)
    return _page()


# -- sign-in sessions --------------------------------------------------------------------------


@router.post("/ui/api/session")
async def sign_in(body: SignIn, request: Request, svc: Services = Depends(services)) -> Response:
    check_origin(request, svc.config.public_url)  # no signing a browser in from another site
    key = body.api_key.strip()
    if not key or svc.keys.by_hash(hash_key(key)) is None:
        raise ApiError(
            ErrorType.UNAUTHORIZED,
            "That API key is not valid; check it (the server's first key is the HUTCH_API_KEY "
            "it started with, or the file <data dir>/api-key)",
        )
    token = svc.web_sessions.create(hash_key(key))
    response = Response(status_code=204)
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(svc.web_sessions.lifetime),
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_https(request, svc.config.public_url),
    )
    return response


@router.delete("/ui/api/session", status_code=204)
async def sign_out(request: Request, svc: Services = Depends(services)) -> Response:
    token = request.cookies.get(COOKIE)
    if token:
        check_origin(request, svc.config.public_url)
        svc.web_sessions.delete(token)
    response = Response(status_code=204)
    response.delete_cookie(
        COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_https(request, svc.config.public_url),
    )
    return response


@router.get("/ui/api/session")
async def whoami(
    svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    async with svc.db.session() as s:
        workspace = await s.get(Workspace, who.workspace_id)
    return {"workspace": workspace.name if workspace else who.workspace_id}


# -- reads the UI needs beyond the control-plane API ---------------------------------------------


def _cpu(millis: int | None) -> str | None:
    if millis is None:
        return None
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def _memory(size: int | None) -> str | None:
    if size is None:
        return None
    for unit, factor in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _command_json(c: CommandSession) -> dict[str, Any]:
    return {
        "command_id": c.command_id,
        "pid": c.pid,
        "state": c.state.value,
        "pty": c.options.pty,
        "exit_code": c.exit_code,
        "created_at": iso(c.created_at),
        "attached": c.subscribers,
        "output_bytes": c.stdout_bytes + c.stderr_bytes,
    }


def _sandbox_item(svc: Services, row: Sandbox, base: str) -> dict[str, Any]:
    """The control plane's sandbox JSON plus what the UI shows: resources, running commands."""
    item = sandbox_json(row, base, svc.manager.lifetime(row))
    item["resources"] = {"cpu": _cpu(row.cpu_millis), "memory": _memory(row.memory_bytes)}
    item["running_commands"] = sum(1 for c in svc.sessions.list(row.id) if c.running)
    return item


@router.get("/ui/api/sandboxes")
async def list_sandboxes(
    request: Request, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    base = dataplane_base(request)
    rows = await workspace_sandboxes(svc, who)
    return {"sandboxes": [_sandbox_item(svc, row, base) for row in rows]}


@router.get("/ui/api/sandboxes/{name}")
async def get_sandbox(
    name: str,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    return _sandbox_item(svc, await find_sandbox(svc, who, name), dataplane_base(request))


@router.get("/ui/api/sandboxes/{name}/commands")
async def list_commands(
    name: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    """The sandbox's command sessions that have not expired, oldest first (read-only)."""
    row = await find_sandbox(svc, who, name)
    return {"commands": [_command_json(c) for c in svc.sessions.list(row.id)]}


@router.get("/ui/api/images")
async def list_images(
    svc: Services = Depends(services), _: Principal = Depends(principal)
) -> dict[str, Any]:
    """Names of the images in the local store, for the template form."""
    images = await asyncio.to_thread(svc.images.list)
    return {"images": [image.name for image in images]}


def install(app: FastAPI) -> None:
    """Mount the UI's routes and its built files on ``app``."""
    app.include_router(router)
    app.mount("/ui/assets", StaticFiles(directory=STATIC / "assets", check_dir=False), "ui-assets")
