"""Private registries of a workspace (``/registries``, the 0.9+ SDKs' ``client.registries``).

A registry is a name, a host (``url``) and credentials; snapshots built with its ``registry_id``
pull with them. The password is kept in a 0600 file of the data dir (``<data-dir>/registries/``),
never in the database, never in an answer, never on a command line. A registry's credentials are
only ever sent to its own host: a snapshot whose image is on another registry is refused.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import Field, StrictStr
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from hutch.protocol._errors import ErrorType
from hutch.runtime.images import Credentials
from hutch.server._auth import Principal
from hutch.server._deps import Services, principal, services
from hutch.server._errors import ApiError, not_found
from hutch.server._schemas import PageOffset, _Body, iso
from hutch.store import Registry, contains_ci, utcnow

router = APIRouter()
HINT = "list them with client.registries.list()"
#: ``host[:port]`` of a registry, as image references name it (an optional scheme is dropped).
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(:[0-9]{1,5})?$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$")
AuthType = Literal["DOCKER_CONFIG", "AWS_ROLE"]


def registry_host(url: str) -> str:
    """``https://reg.example.com:5000/`` → ``reg.example.com:5000``.

    Raises:
        ValueError: Not a registry host.
    """
    host = url.split("://", 1)[-1].strip("/")
    if "/" in host or not _HOST.match(host):
        raise ValueError(f"{url!r} is not a registry host; give host[:port], e.g. ghcr.io")
    return host.lower()


class RegistryCreate(_Body):
    name: StrictStr
    url: StrictStr
    auth_type: AuthType | None = None
    aws_role_arn: StrictStr | None = None
    username: StrictStr | None = None
    password: StrictStr | None = Field(default=None, repr=False)


class RegistryUpdate(_Body):
    name: StrictStr | None = None
    url: StrictStr | None = None
    auth_type: AuthType | None = None
    aws_role_arn: StrictStr | None = None
    username: StrictStr | None = None
    password: StrictStr | None = Field(default=None, repr=False)


def registry_json(r: Registry) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "url": r.url,
        "auth_type": "DOCKER_CONFIG",
        "provider": "DOCKER_REGISTRY",
        "username": r.username,
        "created_at": iso(r.created_at),
        "updated_at": iso(r.updated_at),
    }


def _refuse_aws(auth_type: str | None, arn: str | None) -> None:
    if auth_type == "AWS_ROLE" or arn is not None:
        raise ApiError(
            ErrorType.NOT_IMPLEMENTED,
            "AWS role registries (auth_type AWS_ROLE, aws_role_arn) are not supported by this "
            "hutch server yet; use DOCKER_CONFIG with a username and password",
        )


def _check(name: str | None, url: str | None) -> str | None:
    if name is not None and not _NAME.match(name):
        raise ApiError(
            ErrorType.VALIDATION,
            f"Invalid request: {name!r} is not a valid registry name: use 1-128 lowercase "
            "letters, digits, '.', '_' and '-'",
        )
    if url is None:
        return None
    try:
        return registry_host(url)
    except ValueError as exc:
        raise ApiError(ErrorType.VALIDATION, f"Invalid request: {exc}") from None


async def _get(svc: Services, who: Principal, name: str) -> Registry:
    async with svc.db.session() as s:
        row = (
            await s.execute(
                select(Registry).where(
                    Registry.workspace_id == who.workspace_id, Registry.name == name
                )
            )
        ).scalar()
    if row is None:
        raise not_found("Registry", name, HINT)
    return row


@router.post("/registries", status_code=201)
async def create_registry(
    body: RegistryCreate, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    _refuse_aws(body.auth_type, body.aws_role_arn)
    host = _check(body.name, body.url)
    if body.username is None or body.password is None:
        raise ApiError(
            ErrorType.VALIDATION, "Invalid request: a registry needs a username and a password"
        )
    row = Registry(
        id=uuid.uuid4().hex,
        workspace_id=who.workspace_id,
        name=body.name,
        url=host or body.url,
        username=body.username,
    )
    try:
        async with svc.db.session() as s, s.begin():
            s.add(row)
    except IntegrityError:
        raise ApiError(
            ErrorType.ALREADY_EXISTS,
            f"Registry '{body.name}' already exists; pick another name or update it",
        ) from None
    svc.manager.snapshots.registries.put(row.id, Credentials(body.username, body.password))
    return registry_json(row)


@router.get("/registries")
async def list_registries(
    name_contains: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int | None, Query(ge=1, le=500)] = None,
    page_size: Annotated[int | None, Query(ge=1, le=500)] = None,
    offset: PageOffset = 0,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """Newest first; ``cursor`` is the offset of the next page as text (``next_cursor``)."""
    if cursor is not None:
        if not cursor.isdigit():
            raise ApiError(ErrorType.VALIDATION, "Invalid request: cursor is not one we issued")
        offset = int(cursor)
    size = page_size or limit or 50
    query = select(Registry).where(Registry.workspace_id == who.workspace_id)
    if name_contains:
        query = query.where(contains_ci(Registry.name, name_contains))
    query = query.order_by(Registry.created_at.desc(), Registry.id).limit(size + 1).offset(offset)
    async with svc.db.session() as s:
        rows = list((await s.execute(query)).scalars())
    more = len(rows) > size
    items = [registry_json(r) for r in rows[:size]]
    return {
        "items": items,
        "registries": items,
        "offset": offset,
        "next_cursor": str(offset + size) if more else None,
    }


@router.get("/registries/{name}")
async def get_registry(
    name: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    return registry_json(await _get(svc, who, name))


@router.patch("/registries/{name}")
async def update_registry(
    name: str,
    body: RegistryUpdate,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    _refuse_aws(body.auth_type, body.aws_role_arn)
    host = _check(body.name, body.url)
    row = await _get(svc, who, name)
    store = svc.manager.snapshots.registries
    old = store.get(row.id)
    try:
        async with svc.db.session() as s, s.begin():
            fresh = await s.get(Registry, row.id)
            if fresh is None:
                raise not_found("Registry", name, HINT)
            if body.name is not None:
                fresh.name = body.name
            if host is not None:
                fresh.url = host
            if body.username is not None:
                fresh.username = body.username
            fresh.updated_at = utcnow()
            row = fresh
    except IntegrityError:
        raise ApiError(ErrorType.NAME_CONFLICT, f"Registry name '{body.name}' in use") from None
    if body.username is not None or body.password is not None:
        password = body.password if body.password is not None else (old.password if old else "")
        store.put(row.id, Credentials(row.username, password))
    return registry_json(row)


@router.delete("/registries/{name}", status_code=204)
async def delete_registry(
    name: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Response:
    row = await _get(svc, who, name)
    async with svc.db.session() as s, s.begin():
        fresh = await s.get(Registry, row.id)
        if fresh is not None:
            await s.delete(fresh)
    svc.manager.snapshots.registries.delete(row.id)
    return Response(status_code=204)
