"""Workspace secrets over the API (``/secrets``): set, list (names and times), delete.

No route answers a value: egress header rules name secrets (``{NAME}`` in a header's value) and
only the egress proxy ever sees them opened. See docs/egress.md and :mod:`._secrets_store`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import Field, StrictStr

from hutch.protocol._errors import ErrorType
from hutch.runtime._egress_policy import HEADER_RULES
from hutch.server._auth import Principal
from hutch.server._deps import Services, principal, services
from hutch.server._errors import ApiError, not_found
from hutch.server._schemas import _Body, iso
from hutch.server._secrets_rules import resolve_rules
from hutch.server._secrets_store import (
    SecretBox,
    SecretError,
    SecretInfo,
    check_name,
    delete_secret,
    list_secrets,
    set_secret,
)

router = APIRouter()
HINT = "list them with GET /secrets, or `hutch secrets list`"


class SecretSet(_Body):
    value: StrictStr = Field(repr=False)


@functools.cache
def secret_box(data_dir: Path) -> SecretBox:
    """One per data dir (its key is read once)."""
    return SecretBox.in_dir(data_dir)


def box_of(svc: Services) -> SecretBox:
    return secret_box(svc.config.data_dir)


def secret_json(info: SecretInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "created_at": iso(info.created_at),
        "updated_at": iso(info.updated_at),
    }


def _invalid(exc: SecretError) -> ApiError:
    return ApiError(ErrorType.VALIDATION, f"Invalid request: {exc}")


@router.get("/secrets")
async def list_workspace_secrets(
    svc: Services = Depends(services), who: Principal = Depends(principal)
) -> dict[str, Any]:
    """The workspace's secrets by name, with when each was set (never a value)."""
    items = [secret_json(i) for i in await list_secrets(svc.db, who.workspace_id)]
    return {"secrets": items}


@router.put("/secrets/{name}")
async def put_workspace_secret(
    name: str,
    body: SecretSet,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """Create or replace a secret (the answer holds its name and times, not its value).
    Sandboxes whose rules name it get the new value when their proxy_config is next set."""
    try:
        info = await set_secret(svc.db, box_of(svc), who.workspace_id, name, body.value)
    except SecretError as exc:
        raise _invalid(exc) from None
    return secret_json(info)


@router.delete("/secrets/{name}", status_code=204)
async def delete_workspace_secret(
    name: str, svc: Services = Depends(services), who: Principal = Depends(principal)
) -> Response:
    try:
        check_name(name)
    except SecretError as exc:
        raise _invalid(exc) from None
    if not await delete_secret(svc.db, who.workspace_id, name):
        raise not_found("Secret", name, HINT)
    return Response(status_code=204)


async def with_secrets(
    svc: Services, who: Principal, access_control: dict[str, Any] | None
) -> dict[str, Any] | None:
    """A checked ``proxy_config`` (:func:`proxy_access_control`) as the runtime takes it: the
    header rules' secrets resolved, under :data:`HEADER_RULES`."""
    if not access_control or "rules" not in access_control:
        return access_control
    rest = {k: v for k, v in access_control.items() if k != "rules"}
    rules = await resolve_rules(svc.db, box_of(svc), who.workspace_id, access_control["rules"])
    return {**rest, HEADER_RULES: rules}
