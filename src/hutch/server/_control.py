"""Control plane (spec §2.1–§2.2, §8, §9.1): templates and sandboxes, their start and stop."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hutch.domain import WrongState
from hutch.protocol._errors import ErrorType
from hutch.protocol._exec import ExecProtocolError, RunConfig
from hutch.runtime._interface import RuntimeError_, SandboxNotFound
from hutch.runtime._resources import parse_cpu, parse_memory
from hutch.server._auth import Principal
from hutch.server._deps import Services, dataplane_base, principal, services
from hutch.server._errors import ApiError, api_error, not_found
from hutch.server._logs import note_sandbox
from hutch.server._manager import (
    DELETING,
    FAILED,
    PROVISIONING,
    READY,
    STOPPED,
    SandboxManager,
    StartFailed,
    generate_name,
)
from hutch.server._schemas import (
    SandboxCreate,
    SandboxUpdate,
    TemplateCreate,
    TemplateUpdate,
    default_proxy_config,
    proxy_access_control,
    sandbox_json,
    template_json,
)
from hutch.server._secrets import with_secrets
from hutch.server._secrets_rules import shown_proxy_config
from hutch.server._snapshot_store import READY as SNAPSHOT_READY
from hutch.server._snapshot_store import (
    SnapshotError,
    dump_layers,
    load_layers,
    load_run_config,
)
from hutch.store import Sandbox, Snapshot, Template, utcnow

router = APIRouter()

TEMPLATE_HINT = "list templates with list_templates() or create it with create_template()"
SANDBOX_HINT = "list sandboxes with list_sandboxes()"
#: What to do about a sandbox in each state, for errors of stop and start.
STATE_HINT: dict[str, str] = {
    PROVISIONING: "wait until it is ready (wait_for_sandbox())",
    READY: "stop it first",
    STOPPED: "start it first",
    FAILED: "delete it and create a new one",
    DELETING: "it is being deleted; send the delete again if it stays so",
}
#: Resources of a sandbox made from the default image (the SDKs' template defaults).
DEFAULT_CPU, DEFAULT_MEMORY = "500m", "512Mi"
LIFETIMES = ("ttl_seconds", "idle_ttl_seconds", "delete_after_stop_seconds")


async def _template(
    svc: Services, who: Principal, name: str, session: AsyncSession | None = None
) -> Template:
    async with contextlib.nullcontext(session) if session else svc.db.session() as s:
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


async def sandbox_by_name(svc: Services, who: Principal, name: str) -> Sandbox:
    row = await svc.manager.sandboxes.by_name(who.workspace_id, name)
    if row is None:
        raise not_found("Sandbox", name, SANDBOX_HINT)
    note_sandbox(row.id)  # for the request's log line
    return row


_sandbox = sandbox_by_name


def on_this_node(svc: Services, row: Sandbox) -> Sandbox:
    """The sandbox, if this server runs it; else 421 naming the node that does.

    Servers sharing one database each run their own sandboxes: another node's container is
    not here, and acting on its record (a stop, a delete) would break it under that node.
    """
    if row.node is not None and row.node != svc.manager.node:
        raise ApiError(
            ErrorType.NOT_READY,
            f"Sandbox '{row.name}' runs on another hutch server (node {row.node}); send "
            "requests for it to that server",
            status=421,
        )
    return row


async def workspace_sandboxes(svc: Services, who: Principal) -> list[Sandbox]:
    """The workspace's sandboxes, oldest first."""
    return await svc.manager.sandboxes.list_workspace(who.workspace_id)


# -- templates ---------------------------------------------------------------------------------


def fits_pool(svc: Services, storage: int) -> None:
    """A disk limit larger than the runtime can give one sandbox could never be honoured: 422."""
    most = svc.config.runtime.max_storage_bytes
    if most is not None and storage > most:
        raise ApiError(
            ErrorType.VALIDATION,
            f"A disk limit of {storage} bytes is larger than this server's storage pool "
            f"({most} bytes); ask for less, or start the server with a larger "
            "--storage-pool-size",
        )


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
    if body.resources.storage:
        fits_pool(svc, parse_memory(body.resources.storage, field="storage", check_host=False))
    proxy_config = default_proxy_config(body.proxy_config, "A template's")
    row = Template(
        id=uuid.uuid4().hex,
        workspace_id=who.workspace_id,
        name=body.name,
        image=body.image,
        cpu=body.resources.cpu,
        memory=body.resources.memory,
        storage=body.resources.storage,
        network=body.network or svc.config.default_network,
        proxy_config=json.dumps(proxy_config) if proxy_config else None,
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


def check_granularity(svc: Services, value: int | None, field: str) -> None:
    """Lifetimes of snapshot-era sandboxes are whole minutes (the SDKs say so; the server
    checks too). ``hutch serve --ttl-granularity`` sets the unit (tests use seconds)."""
    unit = svc.config.ttl_granularity
    if value and unit > 1 and value % unit:
        raise ApiError(
            ErrorType.VALIDATION,
            f"Invalid request: field '{field}': {value} is not a multiple of {unit} seconds; "
            f"round it to {max(unit, value - value % unit)}",
        )


def _progress(mgr: SandboxManager, sandbox_id: str) -> str:
    message = mgr.progress.get(sandbox_id)
    return f": {message}" if message else ""


async def _insert_sandbox(
    svc: Services,
    who: Principal,
    body: SandboxCreate,
    origin: Origin,
    resources: Resources,
) -> Sandbox:
    """Write the new sandbox's row (status provisioning), generating a name if none was given."""
    image, cpu, memory = resources
    tpl, snap = origin.template, origin.snapshot
    idle_ttl: int | None
    delete_after_stop: int | None
    if tpl is None:  # the snapshot era (§9.1): server defaults for lifetimes left out
        idle_ttl = (
            body.idle_ttl_seconds
            if body.idle_ttl_seconds is not None
            else svc.config.default_idle_ttl
        )
        delete_after_stop = (
            body.delete_after_stop_seconds
            if body.delete_after_stop_seconds is not None
            else svc.config.default_delete_after_stop
        )
    else:
        idle_ttl, delete_after_stop = body.idle_ttl_seconds, body.delete_after_stop_seconds
    network = tpl.network if tpl else snap.network if snap else svc.config.default_network
    for _ in range(5):
        candidate = svc.manager.new_row(
            who.workspace_id,
            body.name or generate_name(),
            image=image,
            cpu_millis=cpu,
            memory_bytes=memory,
            template=tpl,
            ttl=body.ttl_seconds,
            idle_ttl=idle_ttl,
            delete_after_stop=delete_after_stop,
            network=network,
        )
        candidate.snapshot_id = snap.id if snap else None
        candidate.run_config = dump_layers(origin.run_config, body_run_config(body))
        candidate.labels = json.dumps(body.labels) if body.labels else None
        candidate.fs_capacity_bytes = origin.storage
        candidate.persistent = body.persistent is not False
        candidate.proxy_config = shown_proxy_config(
            body.proxy_config if body.proxy_config is not None else origin.proxy_config
        )
        try:
            await svc.manager.sandboxes.insert(candidate)
            return candidate
        except IntegrityError:
            if body.name:
                raise ApiError(
                    ErrorType.ALREADY_EXISTS,
                    f"Sandbox '{body.name}' already exists; pick another name or delete it first",
                ) from None
    # pragma: no cover - five random 8-character collisions in a row
    raise ApiError(ErrorType.INTERNAL, "Could not generate a unique sandbox name; retry")


Resources = tuple[str, int, int]


def parse_run_config(value: dict[str, Any] | None, what: str = "run_config") -> RunConfig | None:
    """A ``run_config`` of a request, or the 422 envelope saying what is wrong with it."""
    try:
        return RunConfig.from_json(value, what)
    except ExecProtocolError as exc:
        raise ApiError(ErrorType.VALIDATION, f"Invalid request: {exc}") from None


@dataclass(frozen=True)
class Origin:
    """What a new sandbox is made from: a template, a snapshot, or neither (the default image)."""

    template: Template | None = None
    snapshot: Snapshot | None = None
    #: The snapshot's run configuration layer.
    run_config: RunConfig | None = None
    #: Disk limit of its writable layer (None: the server's default).
    storage: int | None = None
    #: Its template's default ``proxy_config`` (else the server's), for a create naming none.
    proxy_config: dict[str, Any] | None = None


def body_run_config(body: SandboxCreate) -> RunConfig | None:
    return parse_run_config(body.run_config)


async def _origin(
    svc: Services, who: Principal, body: SandboxCreate, session: AsyncSession
) -> Origin:
    refs = [r for r in (body.snapshot_id, body.snapshot, body.snapshot_name) if r]
    if len(set(refs)) > 1:
        raise ApiError(
            ErrorType.VALIDATION,
            "Invalid request: give at most one of snapshot_id, snapshot and snapshot_name",
        )
    if refs and body.template_name:
        raise ApiError(
            ErrorType.VALIDATION,
            "Invalid request: give template_name or a snapshot, not both",
        )
    if body.template_name:
        tpl = await _template(svc, who, body.template_name, session)
        storage = body.fs_capacity_bytes or (
            parse_memory(tpl.storage, field="storage", check_host=False) if tpl.storage else None
        )
        defaults = json.loads(tpl.proxy_config) if tpl.proxy_config else None
        return Origin(
            template=tpl,
            storage=storage,
            proxy_config=defaults or svc.config.default_proxy_config,
        )
    if not refs:
        return Origin(storage=body.fs_capacity_bytes, proxy_config=svc.config.default_proxy_config)
    try:
        snap = await svc.manager.snapshots.get(who.workspace_id, refs[0], session)
    except SnapshotError as exc:
        raise ApiError(exc.error, str(exc)) from None
    if snap.status != SNAPSHOT_READY:
        raise ApiError(
            ErrorType.NOT_READY,
            f"Snapshot '{refs[0]}' is {snap.status}"
            + (f" ({snap.status_message})" if snap.status_message else "")
            + (
                "; wait for it with wait_for_snapshot()"
                if snap.status == "building"
                else "; delete it and build it again"
            ),
        )
    return Origin(
        snapshot=snap,
        run_config=load_run_config(snap.run_config),
        storage=body.fs_capacity_bytes or snap.fs_capacity_bytes or None,
        proxy_config=svc.config.default_proxy_config,
    )


def _resources(svc: Services, body: SandboxCreate, origin: Origin) -> Resources:
    """Image, CPU (millicores) and memory (bytes) of a new sandbox: from its template, its
    snapshot, else the server's default image (§9.1), with ``vcpus`` / ``mem_bytes`` over any."""
    tpl = origin.template
    if tpl is not None:
        image, cpu, memory = tpl.image, parse_cpu(tpl.cpu), parse_memory(tpl.memory)
    elif origin.snapshot is not None:
        image = origin.snapshot.image
        cpu, memory = parse_cpu(DEFAULT_CPU), parse_memory(DEFAULT_MEMORY)
    elif svc.config.default_image:
        image = svc.config.default_image
        cpu, memory = parse_cpu(DEFAULT_CPU), parse_memory(DEFAULT_MEMORY)
    else:
        raise ApiError(
            ErrorType.VALIDATION,
            "No template_name given and this server has no default image; pass template_name "
            "(see list_templates()), or start the server with --default-image NAME "
            "(or HUTCH_DEFAULT_IMAGE)",
        )
    if body.vcpus is not None:
        cpu = body.vcpus * 1000
    if body.mem_bytes is not None:
        memory = body.mem_bytes
    return image, cpu, memory


@router.post("/boxes", status_code=201)
async def create_sandbox(
    body: SandboxCreate,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    missing = body.unsupported()
    if missing:
        raise ApiError(ErrorType.NOT_IMPLEMENTED, missing)
    access_control = await with_secrets(svc, who, proxy_access_control(body.proxy_config))
    mgr: SandboxManager = svc.manager
    async with mgr.quotas.lock(who.workspace_id):
        # What it is made from and what the workspace may still hold, read on one connection
        # (a snapshot or template lookup costs no session of its own on the create path).
        async with svc.db.session() as s:
            origin = await _origin(svc, who, body, s)
            if origin.storage is not None:
                fits_pool(svc, origin.storage)
            if origin.template is None:
                check_granularity(svc, body.idle_ttl_seconds, "idle_ttl_seconds")
                check_granularity(svc, body.delete_after_stop_seconds, "delete_after_stop_seconds")
            image, cpu, memory = _resources(svc, body, origin)
            await mgr.quotas.check(who.workspace_id, cpu, memory, new=True, session=s)
        row = await _insert_sandbox(svc, who, body, origin, (image, cpu, memory))
    snap = origin.snapshot
    if body.proxy_config is None and origin.proxy_config is not None:  # a default applies
        access_control = proxy_access_control(origin.proxy_config)
    if access_control is not None:  # saved before the container exists: enforced from its start
        try:
            await mgr.runtime.set_egress_policy(row.id, access_control)
        except RuntimeError_ as exc:
            await mgr.destroy(row.id)
            raise ApiError(ErrorType.SANDBOX_CONFIG, f"proxy_config: {exc}") from exc
    mgr.start_provisioning(
        row,
        storage_bytes=origin.storage,
        snapshot=snap.id if snap is not None and snap.has_layer else None,
        credentials=mgr.snapshots.credentials.get(uuid.UUID(snap.id).hex) if snap else None,
    )
    mgr.kick()
    base = dataplane_base(request)
    if not body.wait_for_ready:
        return sandbox_json(row, base, mgr.lifetime(row))
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
    # The provisioning task recorded the status; its outcome says when, so no re-read.
    row.status, row.status_message = outcome.status, outcome.message
    if outcome.updated_at is not None:
        row.updated_at = outcome.updated_at
    return sandbox_json(row, base, mgr.lifetime(row))


@router.get("/boxes")
async def list_sandboxes(
    request: Request, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    base = dataplane_base(request)
    rows = await workspace_sandboxes(svc, who)
    return {"sandboxes": [sandbox_json(r, base, svc.manager.lifetime(r)) for r in rows]}


@router.get("/boxes/{name}")
async def get_sandbox(
    name: str,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    row = await _sandbox(svc, who, name)
    return sandbox_json(row, dataplane_base(request), svc.manager.lifetime(row))


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
    """Rename, or change lifetimes (``0`` removes one; a TTL counts from creation, an idle TTL
    from the last activity, so a new value may expire the sandbox at once)."""
    missing = body.unsupported()
    if missing:
        raise ApiError(ErrorType.NOT_IMPLEMENTED, missing)
    access_control = await with_secrets(svc, who, proxy_access_control(body.proxy_config))
    row = await _sandbox(svc, who, name)
    fields = body.model_dump(exclude_unset=True)
    if row.template_id is None:
        check_granularity(svc, fields.get("idle_ttl_seconds"), "idle_ttl_seconds")
        check_granularity(svc, fields.get("delete_after_stop_seconds"), "delete_after_stop_seconds")
    try:
        # Under the sandbox's lock: a delete in flight finishes first (then: not found).
        async with svc.manager.lock(row.id), svc.db.session() as s, s.begin():
            fresh = await s.get(Sandbox, row.id)
            if fresh is None:
                raise not_found("Sandbox", name, SANDBOX_HINT)
            if body.proxy_config is not None:  # for new connections, at once
                if fresh.status != READY:
                    raise ApiError(
                        ErrorType.INVALID_REQUEST,
                        f"Sandbox '{fresh.name}' is {fresh.status}; start it before changing "
                        "its proxy_config",
                    )
                try:
                    await svc.manager.runtime.set_egress_policy(fresh.id, access_control)
                except RuntimeError_ as exc:
                    raise ApiError(ErrorType.SANDBOX_CONFIG, f"proxy_config: {exc}") from exc
                fresh.proxy_config = shown_proxy_config(body.proxy_config)
            if fields.get("name") is not None:
                fresh.name = fields["name"]
            for key in LIFETIMES:
                if key in fields:
                    setattr(fresh, key, fields[key] or None)
            if "run_config" in fields:  # replaces the sandbox's own layer
                base, _own = load_layers(fresh.run_config)
                fresh.run_config = dump_layers(base, parse_run_config(fields["run_config"]))
            fresh.updated_at = utcnow()
            row = fresh
    except IntegrityError:
        raise ApiError(
            ErrorType.NAME_CONFLICT, f"Sandbox name '{body.name}' already in use"
        ) from None
    svc.manager.kick()
    return sandbox_json(row, dataplane_base(request), svc.manager.lifetime(row))


async def _lifecycle(
    op: Callable[[str], Awaitable[Sandbox]],
    name: str,
    request: Request,
    svc: Services,
    who: Principal,
) -> dict[str, Any]:
    """Apply the manager's ``stop`` or ``start`` to a sandbox and answer it, or the error."""
    row = on_this_node(svc, await _sandbox(svc, who, name))
    try:
        row = await op(row.id)
    except WrongState as exc:
        raise api_error(exc, f"{exc}: {STATE_HINT[exc.current]}") from exc
    except StartFailed as exc:
        raise ApiError(exc.error, str(exc)) from exc
    except SandboxNotFound:
        raise not_found("Sandbox", name, SANDBOX_HINT) from None
    return sandbox_json(row, dataplane_base(request), svc.manager.lifetime(row))


@router.post("/boxes/{name}/stop")
async def stop_sandbox(
    name: str,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """Stop it (§8): its commands end, its CPU and memory are freed, its files are kept."""
    return await _lifecycle(svc.manager.stop, name, request, svc, who)


@router.post("/boxes/{name}/start")
async def start_sandbox(
    name: str,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """Start a stopped sandbox (§8) with its files as they were; ready when this answers
    (under the workspace's quota: its CPU and memory count again)."""
    return await _lifecycle(svc.manager.start, name, request, svc, who)


@router.delete("/boxes/{name}", status_code=204)
async def delete_sandbox(
    name: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Response:
    row = on_this_node(svc, await _sandbox(svc, who, name))
    try:
        await svc.manager.destroy(row.id)
    except RuntimeError_ as exc:  # recorded as deleting: a retry (or a restart) finishes it
        raise ApiError(
            ErrorType.IN_USE,
            f"Sandbox '{name}' could not be removed yet ({exc}); it is marked deleting: "
            "send the delete again",
        ) from exc
    return Response(status_code=204)
