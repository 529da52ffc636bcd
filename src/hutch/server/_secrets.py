"""Workspace secrets over the API (``/secrets``): set, list (names and times), delete.

No route answers a value: egress header rules name secrets (``{NAME}`` in a header's value) and
only the egress proxy ever sees them opened. See docs/egress.md and :mod:`._secrets_store`.
"""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Response
from pydantic import Field, StrictStr

from hutch.protocol._errors import ErrorType
from hutch.runtime import _fs
from hutch.runtime.runc._egress_policy import HEADER_RULES
from hutch.runtime.runc._egress_tls import EgressCA, ca_dir
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


#: Where the interception CA's certificate goes in a sandbox with header rules: the bundles
#: OpenSSL reads by default (Python, curl, wget, Go, Ruby, ...) on Debian and Ubuntu
#: (``/usr/lib/ssl/cert.pem`` is a link to the first when ca-certificates is installed, and
#: the only one read when it is not), Alpine and RHEL; and Debian's drop-in directory, so that
#: an ``update-ca-certificates`` in the sandbox keeps it. Each is appended to (made if missing)
#: unless it holds the certificate already.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CA_BUNDLES = (CA_BUNDLE, "/usr/lib/ssl/cert.pem", "/etc/ssl/cert.pem",
              "/etc/pki/tls/certs/ca-bundle.crt")  # fmt: skip
CA_DROP_IN = "/usr/local/share/ca-certificates/hutch-egress.crt"
#: A sandbox's bundle larger than this is left alone (the drop-in is still written).
MAX_BUNDLE = 8 << 20


def _install_ca(root_fd: int, pem: bytes, uid: int, gid: int) -> None:
    """Append ``pem`` to the sandbox's bundle unless it is there (blocking). Paths resolve
    inside the sandbox's root (openat2 RESOLVE_IN_ROOT): its links cannot lead out."""
    for path, append in ((CA_DROP_IN, False), *((b, True) for b in CA_BUNDLES)):
        current = b""
        if append:
            try:
                fd, size = _fs.open_for_read(root_fd, path)
            except _fs.SandboxPathError:
                size, fd = 0, -1
            if fd >= 0:
                try:
                    if size > MAX_BUNDLE:
                        continue
                    current = os.read(fd, MAX_BUNDLE + 1)
                finally:
                    os.close(fd)
            if pem in current:
                continue
            if current and not current.endswith(b"\n"):
                current += b"\n"
        fd = _fs.open_for_write(root_fd, path, uid, gid)
        try:
            _fs.write_all(fd, [current, pem])
        finally:
            os.close(fd)


async def install_ca(svc: Services, sandbox_id: str) -> None:
    """Give a ready sandbox with header rules the server's interception CA (HTTPS to the rules'
    hosts is terminated by the egress proxy with certificates of that CA).

    Raises ApiError: the sandbox's files cannot take it (422 SandboxConfig).
    """
    ca = await asyncio.to_thread(EgressCA, ca_dir(svc.config.data_dir))
    runtime = svc.manager.runtime
    uid, gid = runtime.file_owner(sandbox_id)
    root = runtime.root_fd(sandbox_id)
    try:
        await asyncio.to_thread(_install_ca, root, ca.pem, uid, gid)
    except (OSError, _fs.SandboxPathError) as exc:
        raise ApiError(
            ErrorType.SANDBOX_CONFIG,
            f"proxy_config: the egress CA could not be added to the sandbox's {CA_BUNDLE} "
            f"({exc}); HTTPS to the rules' hosts will not verify",
        ) from None
    finally:
        os.close(root)


def needs_ca(access_control: dict[str, Any] | None) -> bool:
    """Does the sandbox need the interception CA (it has header rules)?"""
    return bool(access_control and access_control.get(HEADER_RULES))
