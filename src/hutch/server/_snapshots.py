"""Snapshot endpoints (spec §8 and §9.1 "Snapshots"; domain rules in :mod:`._snapshot_store`).

``POST /snapshots`` builds one from an image, ``POST /boxes/{name}/snapshot`` captures a sandbox's
files, ``GET /snapshots[/{ref}]``, ``GET /snapshots-by-name/{name}`` and ``DELETE
/snapshots/{ref}`` read and remove them. Sandboxes boot from one with ``snapshot_id``,
``snapshot`` or ``snapshot_name`` on ``POST /boxes`` (see :mod:`._control`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import Field, StrictStr

from hutch.protocol._errors import ErrorType
from hutch.runtime._resources import QuantityError, parse_memory
from hutch.runtime.images import Credentials, ImageError, normalize_reference
from hutch.server._auth import Principal
from hutch.server._control import (
    SANDBOX_HINT,
    fits_pool,
    on_this_node,
    parse_run_config,
    sandbox_by_name,
)
from hutch.server._deps import Services, principal, services
from hutch.server._errors import ApiError
from hutch.server._manager import READY, STOPPED
from hutch.server._registries import registry_host
from hutch.server._schemas import PageOffset, Positive, _Body, iso
from hutch.server._snapshot_store import (
    NewSnapshot,
    SnapshotError,
    check_name,
    check_tag,
    image_tag,
    load_layers,
    load_run_config,
)
from hutch.store import Registry, Snapshot

router = APIRouter()


class SnapshotCreate(_Body):
    name: StrictStr
    docker_image: StrictStr
    fs_capacity_bytes: Positive | None = None
    tag: StrictStr | None = None
    registry_id: StrictStr | None = None
    #: 0.7.33 sends a registry inline instead of a ``registry_id``.
    registry_url: StrictStr | None = None
    registry_username: StrictStr | None = None
    registry_password: StrictStr | None = Field(default=None, repr=False)
    run_config: dict[str, Any] | None = None


class SnapshotCapture(_Body):
    name: StrictStr
    tag: StrictStr | None = None
    fs_capacity_bytes: Positive | None = None
    run_config: dict[str, Any] | None = None
    #: Memory checkpoints (0.7.33) and exporting an image built inside the sandbox (0.10+):
    #: features hutch lacks, refused with 501 naming them.
    checkpoint: StrictStr | None = None
    docker_image: StrictStr | None = None


def snapshot_json(row: Snapshot, tags: list[str], progress: str | None = None) -> dict[str, Any]:
    rc = load_run_config(row.run_config)
    return {
        "id": row.id,
        "name": row.name,
        "status": row.status,
        "status_message": progress or row.status_message,
        "docker_image": row.docker_image,
        "image_digest": row.image_digest,
        "fs_capacity_bytes": row.fs_capacity_bytes,
        "fs_used_bytes": row.fs_used_bytes,
        "source_sandbox_id": row.source_sandbox_id,
        "created_by": row.created_by,
        "registry_id": row.registry_id,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "tags": tags,
        "run_config": rc.to_json() if rc is not None else None,
    }


def _api(exc: SnapshotError) -> ApiError:
    return ApiError(exc.error, str(exc))


def _capacity(svc: Services, value: int | None) -> int:
    """A snapshot's ``fs_capacity_bytes``: checked against the storage pool; None: the default."""
    if value is None:
        return svc.config.default_storage_bytes
    try:
        parse_memory(str(value), field="fs_capacity_bytes", check_host=False)
    except QuantityError as exc:
        raise ApiError(ErrorType.VALIDATION, f"Invalid request: {exc}") from None
    fits_pool(svc, value)
    return value


async def _json(svc: Services, row: Snapshot) -> dict[str, Any]:
    tags = await svc.manager.snapshots.tags_of([row.id])
    return snapshot_json(row, tags.get(row.id, []), svc.manager.snapshots.progress(row.id))


async def _registry_credentials(
    svc: Services, who: Principal, body: SnapshotCreate, image: str
) -> Credentials | None:
    if body.registry_id is not None:
        async with svc.db.session() as s:
            reg = await s.get(Registry, body.registry_id)
        if reg is None or reg.workspace_id != who.workspace_id:
            raise ApiError(
                ErrorType.NOT_FOUND,
                f"Registry '{body.registry_id}' not found; list them with GET /registries",
            )
        host = image.split("/", 1)[0]
        if host.lower() != reg.url.lower():
            raise ApiError(
                ErrorType.VALIDATION,
                f"Invalid request: docker_image {body.docker_image!r} is not on registry "
                f"'{reg.name}' ({reg.url}); its credentials are only sent to that host",
            )
        return svc.manager.snapshots.registries.get(reg.id)
    if (body.registry_username is None) != (body.registry_password is None):
        raise ApiError(
            ErrorType.VALIDATION,
            "Invalid request: give both registry_username and registry_password, or neither",
        )
    if body.registry_url is not None:
        try:
            host = registry_host(body.registry_url)
        except ValueError as exc:
            raise ApiError(ErrorType.VALIDATION, f"Invalid request: registry_url: {exc}") from None
        if image.split("/", 1)[0].lower() != host:
            raise ApiError(
                ErrorType.VALIDATION,
                f"Invalid request: docker_image {body.docker_image!r} is not on registry_url "
                f"{body.registry_url!r}; name the image with its registry ('{host}/name:tag')",
            )
    if body.registry_username is not None and body.registry_password is not None:
        return Credentials(body.registry_username, body.registry_password)
    return None


@router.post("/snapshots", status_code=201)
async def create_snapshot(
    body: SnapshotCreate, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    """Build a snapshot from an image; answers once it is ready or after a few seconds
    (``building``: clients poll ``GET /snapshots/{id}``)."""
    try:
        name = check_name(body.name)
        tag = check_tag(body.tag) if body.tag is not None else image_tag(body.docker_image)
    except SnapshotError as exc:
        raise _api(exc) from None
    try:
        image = normalize_reference(body.docker_image)
    except ImageError as exc:
        raise ApiError(ErrorType.VALIDATION, f"Invalid request: docker_image: {exc}") from None
    new = NewSnapshot(
        name=name,
        docker_image=body.docker_image,
        image=image,
        fs_capacity_bytes=_capacity(svc, body.fs_capacity_bytes),
        tag=tag,
        run_config=parse_run_config(body.run_config),
        registry_id=body.registry_id,
        credentials=await _registry_credentials(svc, who, body, image),
    )
    snapshots = svc.manager.snapshots
    row = await snapshots.create(who.workspace_id, who.key_id, new)
    await snapshots.wait(row.id, svc.config.snapshot_wait_seconds)
    return await _json(svc, await snapshots.get(who.workspace_id, row.id))


@router.get("/snapshots")
async def list_snapshots(
    name_contains: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: PageOffset = 0,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """A page of the workspace's snapshots, newest first (``limit`` 1-500, default 50)."""
    snapshots = svc.manager.snapshots
    rows = await snapshots.page(
        who.workspace_id, name_contains=name_contains, limit=limit, offset=offset
    )
    tags = await snapshots.tags_of([r.id for r in rows])
    return {
        "snapshots": [snapshot_json(r, tags.get(r.id, []), snapshots.progress(r.id)) for r in rows],
        "offset": offset,
        "limit": limit,
    }


@router.get("/snapshots/{ref}")
async def get_snapshot(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    """By id, ``name:tag``, or a bare name (``name:latest``, else its newest ready snapshot)."""
    try:
        row = await svc.manager.snapshots.get(who.workspace_id, ref)
    except SnapshotError as exc:
        raise _api(exc) from None
    return await _json(svc, row)


@router.delete("/snapshots/{ref}", status_code=204)
async def delete_snapshot(
    ref: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Response:
    """Delete a snapshot and its tags; sandboxes booted from it keep running with their files."""
    try:
        row = await svc.manager.snapshots.get(who.workspace_id, ref)
    except SnapshotError as exc:
        raise _api(exc) from None
    await svc.manager.snapshots.delete(row)
    return Response(status_code=204)


@router.get("/snapshots-by-name/{name}")
async def snapshot_tags(
    name: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    """Every tag published under ``name`` and the snapshot it points at."""
    if ":" in name:
        raise ApiError(
            ErrorType.VALIDATION,
            f"Invalid request: '{name}' carries a tag; list the tags of "
            f"'{name.split(':', 1)[0]}' instead",
        )
    try:
        tags = await svc.manager.snapshots.tags_by_name(who.workspace_id, name)
    except SnapshotError as exc:
        raise _api(exc) from None
    return {"name": name, "tags": [{"tag": t, "snapshot_id": sid} for t, sid in tags]}


@router.post("/boxes/{name}/snapshot", status_code=201)
async def capture_snapshot(
    name: str,
    body: SnapshotCapture,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """Keep a sandbox's files (its image plus everything written since; not tmpfs mounts, not
    processes) as a new ready snapshot; copy-on-write, so it takes milliseconds."""
    if body.checkpoint is not None:
        raise ApiError(
            ErrorType.NOT_IMPLEMENTED,
            "Memory checkpoints (checkpoint) are not supported by this hutch server yet; a "
            "snapshot keeps files only: leave checkpoint out",
        )
    if body.docker_image is not None:
        raise ApiError(
            ErrorType.NOT_IMPLEMENTED,
            "Exporting an image built inside the sandbox (docker_image) is not supported by this "
            "hutch server yet; leave docker_image out to capture the sandbox's own files",
        )
    try:
        snap_name = check_name(body.name)
        tag = check_tag(body.tag) if body.tag is not None else "latest"
    except SnapshotError as exc:
        raise _api(exc) from None
    override = parse_run_config(body.run_config)
    row = on_this_node(svc, await sandbox_by_name(svc, who, name))
    mgr = svc.manager
    async with mgr.lock(row.id):
        row = await sandbox_by_name(svc, who, name)
        if row.status not in (READY, STOPPED):
            raise ApiError(
                ErrorType.NOT_READY,
                f"Sandbox '{name}' is {row.status}; a capture needs it ready or stopped "
                f"({SANDBOX_HINT})",
            )
        layers = load_layers(row.run_config)
        base = layers[0]
        run_config = override.over(base) if override is not None else base
        try:
            snap = await mgr.snapshots.capture(
                row,
                created_by=who.key_id,
                name=snap_name,
                tag=tag,
                fs_capacity_bytes=_capacity(svc, body.fs_capacity_bytes or row.fs_capacity_bytes),
                run_config=run_config,
                network=row.network,
            )
        except SnapshotError as exc:
            raise _api(exc) from None
    await mgr.touch(row.id)
    return await _json(svc, snap)
