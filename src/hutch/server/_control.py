"""Control plane (spec §2.1–§2.2): templates and sandboxes."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from hutch.protocol._errors import ErrorType
from hutch.runtime._resources import parse_memory
from hutch.server._auth import Principal
from hutch.server._deps import Services, dataplane_base, principal, services
from hutch.server._errors import ApiError, not_found
from hutch.server._manager import FAILED, PROVISIONING, SandboxManager, generate_name
from hutch.server._schemas import (
    SandboxCreate,
    SandboxUpdate,
    TemplateCreate,
    TemplateUpdate,
    sandbox_json,
    template_json,
)
from hutch.store import Sandbox, Template, utcnow

router = APIRouter()

TEMPLATE_HINT = "list templates with list_templates() or create it with create_template()"
SANDBOX_HINT = "list sandboxes with list_sandboxes()"


async def _template(svc: Services, who: Principal, name: str) -> Template:
    async with svc.db.session() as s:
        row = (
            await s.execute(
                select(Template).where(
                    Template.workspace_id == who.workspace_id, Template.name == name
                )
            )
        ).scalar()
    if row is None:
        raise not_found("Template", name, TEMPLATE_HINT)
    return row


async def _sandbox(svc: Services, who: Principal, name: str) -> Sandbox:
    async with svc.db.session() as s:
        row = (
            await s.execute(
                select(Sandbox).where(
                    Sandbox.workspace_id == who.workspace_id, Sandbox.name == name
                )
            )
        ).scalar()
    if row is None:
        raise not_found("Sandbox", name, SANDBOX_HINT)
    return row


async def workspace_sandboxes(svc: Services, who: Principal) -> list[Sandbox]:
    """The workspace's sandboxes, oldest first."""
    async with svc.db.session() as s:
        rows = await s.execute(
            select(Sandbox)
            .where(Sandbox.workspace_id == who.workspace_id)
            .order_by(Sandbox.created_at)
        )
        return list(rows.scalars())


# -- templates ---------------------------------------------------------------------------------


@router.post("/templates", status_code=201)
async def create_template(
    body: TemplateCreate, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    if body.volume_mounts:
        raise ApiError(
            ErrorType.NOT_IMPLEMENTED,
            "Volumes are not supported by this hutch server yet; "
            "create the template without volume_mounts",
        )
    row = Template(
        id=uuid.uuid4().hex,
        workspace_id=who.workspace_id,
        name=body.name,
        image=body.image,
        cpu=body.resources.cpu,
        memory=body.resources.memory,
        storage=body.resources.storage,
        network=body.network or svc.config.default_network,
    )
    try:
        async with svc.db.session() as s, s.begin():
            s.add(row)
    except IntegrityError:
        raise ApiError(
            ErrorType.ALREADY_EXISTS,
            f"Template '{body.name}' already exists; pick another name or delete it first",
        ) from None
    # The image is not checked here (spec §2.1); pulling starts now so the first sandbox is quick.
    credentials = body.credentials()
    if credentials is not None:
        svc.manager.registry_auth.put(row.id, credentials)
    svc.manager.pulls.prefetch(row.image, credentials=credentials)
    return template_json(row)


@router.get("/templates")
async def list_templates(
    svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    async with svc.db.session() as s:
        rows = (
            await s.execute(
                select(Template)
                .where(Template.workspace_id == who.workspace_id)
                .order_by(Template.created_at)
            )
        ).scalars()
        return {"templates": [template_json(t) for t in rows]}


@router.get("/templates/{name}")
async def get_template(
    name: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    return template_json(await _template(svc, who, name))


@router.patch("/templates/{name}")
async def update_template(
    name: str,
    body: TemplateUpdate,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    row = await _template(svc, who, name)
    if body.name != name:
        try:
            async with svc.db.session() as s, s.begin():
                tpl = await s.get(Template, row.id)
                if tpl is None:
                    raise not_found("Template", name, TEMPLATE_HINT)
                tpl.name, tpl.updated_at = body.name, utcnow()
                row = tpl
        except IntegrityError:
            raise ApiError(
                ErrorType.NAME_CONFLICT, f"Template name '{body.name}' already in use"
            ) from None
    return template_json(row)


@router.delete("/templates/{name}", status_code=204)
async def delete_template(
    name: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Response:
    row = await _template(svc, who, name)
    async with svc.db.session() as s, s.begin():
        users = (
            (await s.execute(select(Sandbox.name).where(Sandbox.template_id == row.id).limit(5)))
            .scalars()
            .all()
        )
        if users:
            raise ApiError(
                ErrorType.IN_USE,
                f"Template '{name}' is used by sandboxes {', '.join(users)}; delete them first",
            )
        tpl = await s.get(Template, row.id)
        if tpl is not None:
            await s.delete(tpl)
    svc.manager.registry_auth.delete(row.id)
    return Response(status_code=204)


# -- sandboxes ---------------------------------------------------------------------------------


def _progress(mgr: SandboxManager, sandbox_id: str) -> str:
    message = mgr.progress.get(sandbox_id)
    return f": {message}" if message else ""


@router.post("/boxes", status_code=201)
async def create_sandbox(
    body: SandboxCreate,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    tpl = await _template(svc, who, body.template_name)
    mgr: SandboxManager = svc.manager
    row = None
    for _ in range(5):
        candidate = mgr.new_row(
            who.workspace_id,
            body.name or generate_name(),
            tpl,
            body.ttl_seconds,
            body.idle_ttl_seconds,
        )
        try:
            async with svc.db.session() as s, s.begin():
                s.add(candidate)
            row = candidate
            break
        except IntegrityError:
            if body.name:
                raise ApiError(
                    ErrorType.ALREADY_EXISTS,
                    f"Sandbox '{body.name}' already exists; pick another name or delete it first",
                ) from None
    if row is None:  # pragma: no cover - five random 8-character collisions in a row
        raise ApiError(ErrorType.INTERNAL, "Could not generate a unique sandbox name; retry")
    storage = parse_memory(tpl.storage, field="storage", check_host=False) if tpl.storage else None
    mgr.start_provisioning(row, storage_bytes=storage)
    base = dataplane_base(request)
    if not body.wait_for_ready:
        return sandbox_json(row, base)
    outcome = await mgr.wait(row.id, body.timeout)
    if outcome is None:
        raise ApiError(
            ErrorType.TIMEOUT,
            f"Sandbox '{row.name}' not ready after {body.timeout}s (last status: "
            f"provisioning{_progress(mgr, row.id)}); it keeps provisioning: poll "
            "get_sandbox_status() or delete it",
        )
    if outcome.status == FAILED:
        # The caller gets the error, so nothing of the sandbox is kept.
        await mgr.destroy(row.id)
        raise ApiError(
            outcome.error or ErrorType.SANDBOX_CONFIG,
            outcome.message or "Sandbox provisioning failed",
        )
    async with svc.db.session() as s:  # the provisioning task recorded status and updated_at
        fresh = await s.get(Sandbox, row.id)
    return sandbox_json(fresh or row, base)


@router.get("/boxes")
async def list_sandboxes(
    request: Request, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    base = dataplane_base(request)
    return {"sandboxes": [sandbox_json(r, base) for r in await workspace_sandboxes(svc, who)]}


@router.get("/boxes/{name}")
async def get_sandbox(
    name: str,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    return sandbox_json(await _sandbox(svc, who, name), dataplane_base(request))


@router.get("/boxes/{name}/status")
async def sandbox_status(
    name: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    row = await _sandbox(svc, who, name)
    message = svc.manager.progress.get(row.id) if row.status == PROVISIONING else None
    return {"status": row.status, "status_message": message or row.status_message}


@router.patch("/boxes/{name}")
async def update_sandbox(
    name: str,
    body: SandboxUpdate,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    row = await _sandbox(svc, who, name)
    fields = body.model_dump(exclude_unset=True)
    try:
        async with svc.db.session() as s, s.begin():
            fresh = await s.get(Sandbox, row.id)
            if fresh is None:
                raise not_found("Sandbox", name, SANDBOX_HINT)
            if fields.get("name") is not None:
                fresh.name = fields["name"]
            for key in ("ttl_seconds", "idle_ttl_seconds"):
                if key in fields:
                    setattr(fresh, key, fields[key] or None)
            fresh.updated_at = utcnow()
            row = fresh
    except IntegrityError:
        raise ApiError(
            ErrorType.NAME_CONFLICT, f"Sandbox name '{body.name}' already in use"
        ) from None
    return sandbox_json(row, dataplane_base(request))


@router.delete("/boxes/{name}", status_code=204)
async def delete_sandbox(
    name: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Response:
    row = await _sandbox(svc, who, name)
    await svc.manager.destroy(row.id)
    return Response(status_code=204)
