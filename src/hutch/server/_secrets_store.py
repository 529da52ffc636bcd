"""Workspace secrets: sealed at rest, named by egress header rules, never answered.

A value is sealed (:class:`SecretBox`: AES-GCM under the server's key, ``<data>/secrets.key``,
0600, made on first use). The workspace id and the secret's name are the associated data: a
sealed value copied to another row (another workspace, another name) does not open. The
database holds only sealed values and the key file never enters it, so a database dump alone
reveals nothing. Values are opened only to hand them to the egress proxy.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select

from hutch.runtime._egress_seal import SealError, SecretBox
from hutch.store import Database, Workspace, WorkspaceSecret, utcnow

__all__ = [
    "MAX_SECRETS",
    "MAX_VALUE",
    "SecretBox",
    "SecretError",
    "SecretInfo",
    "check_name",
    "delete_secret",
    "list_secrets",
    "open_secrets",
    "set_secret",
    "workspace_id",
]

#: Bytes of one value (a token, a service account's JSON) and secrets per workspace.
MAX_VALUE = 64 * 1024
MAX_SECRETS = 1000
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


class SecretError(ValueError):
    """A refused name or value, or a value that does not open; ``str()`` says what to do."""


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise SecretError(
            f"{name[:80]!r} is not a secret name: use 1-128 letters, digits, '_', '.' and '-', "
            "starting with a letter or '_' (e.g. OPENAI_API_KEY)"
        )
    return name


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown of a secret: never its value."""

    name: str
    created_at: datetime
    updated_at: datetime


def _info(row: WorkspaceSecret) -> SecretInfo:
    return SecretInfo(row.name, row.created_at, row.updated_at)


async def set_secret(
    db: Database, box: SecretBox, workspace_id: str, name: str, value: str
) -> SecretInfo:
    """Create or replace; returns what may be shown."""
    check_name(name)
    if not value or len(value.encode()) > MAX_VALUE:
        raise SecretError(f"a secret's value is 1 to {MAX_VALUE} bytes")
    sealed = box.seal(f"{workspace_id}/{name}", value)
    async with db.session() as s, s.begin():
        row = (
            await s.execute(
                select(WorkspaceSecret).where(
                    WorkspaceSecret.workspace_id == workspace_id, WorkspaceSecret.name == name
                )
            )
        ).scalar()
        if row is None:
            count = len(
                (
                    await s.execute(
                        select(WorkspaceSecret.id).where(
                            WorkspaceSecret.workspace_id == workspace_id
                        )
                    )
                ).all()
            )
            if count >= MAX_SECRETS:
                raise SecretError(
                    f"the workspace holds {MAX_SECRETS} secrets already; remove one first"
                )
            now = utcnow()
            row = WorkspaceSecret(
                id=uuid.uuid4().hex,
                workspace_id=workspace_id,
                name=name,
                sealed=sealed,
                created_at=now,
                updated_at=now,
            )
            s.add(row)
        else:
            row.sealed, row.updated_at = sealed, utcnow()
    return _info(row)


async def list_secrets(db: Database, workspace_id: str) -> list[SecretInfo]:
    async with db.session() as s:
        rows = (
            await s.execute(
                select(WorkspaceSecret)
                .where(WorkspaceSecret.workspace_id == workspace_id)
                .order_by(WorkspaceSecret.name)
            )
        ).scalars()
        return [_info(r) for r in rows]


async def delete_secret(db: Database, workspace_id: str, name: str) -> bool:
    """False: there was none of that name."""
    async with db.session() as s, s.begin():
        result = await s.execute(
            delete(WorkspaceSecret).where(
                WorkspaceSecret.workspace_id == workspace_id, WorkspaceSecret.name == name
            )
        )
    return bool(getattr(result, "rowcount", 0))


async def open_secrets(
    db: Database, box: SecretBox, workspace_id: str, names: set[str]
) -> dict[str, str]:
    """The values of ``names`` that the workspace holds (missing names are left out)."""
    if not names:
        return {}
    async with db.session() as s:
        rows = list(
            (
                await s.execute(
                    select(WorkspaceSecret).where(
                        WorkspaceSecret.workspace_id == workspace_id,
                        WorkspaceSecret.name.in_(sorted(names)),
                    )
                )
            ).scalars()
        )
    try:
        return {r.name: box.open(f"{workspace_id}/{r.name}", r.sealed) for r in rows}
    except SealError as exc:
        raise SecretError(str(exc)) from None


async def workspace_id(db: Database, workspace: str) -> str:
    """The id of the workspace named ``workspace`` (operator commands name workspaces)."""
    async with db.session() as s:
        row = (await s.execute(select(Workspace).where(Workspace.name == workspace))).scalar()
    if row is None:
        raise SecretError(f"no workspace {workspace!r} (see `hutch workspaces list`)")
    return row.id
