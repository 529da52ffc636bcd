"""What ``hutch keys`` and ``hutch workspaces`` do to the store (also while a server runs).

A running server re-reads the key table every second (:meth:`KeyRing.watch`), so a new key works
and a revoked one stops working within about a second, without a restart.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select

from hutch.server._auth import KeyRing, new_key
from hutch.store import ApiKey, Database, Sandbox, Workspace


@dataclass(frozen=True)
class KeyInfo:
    id: str
    workspace: str
    name: str
    is_admin: bool
    created_at: datetime


@dataclass(frozen=True)
class WorkspaceInfo:
    name: str
    sandboxes: int
    max_sandboxes: int | None
    max_cpu_millis: int | None
    max_memory_bytes: int | None


class AdminError(Exception):
    pass


async def create_key(db: Database, workspace: str, name: str, is_admin: bool) -> tuple[str, str]:
    """A new key in ``workspace`` (created if new); returns (key, key id). Shown once."""
    if not workspace.strip() or len(workspace) > 128:
        raise AdminError("a workspace name is 1 to 128 characters")
    key = new_key()
    principal = await KeyRing(db).add(key, workspace=workspace, name=name, is_admin=is_admin)
    return key, principal.key_id


async def list_keys(db: Database, workspace: str | None = None) -> list[KeyInfo]:
    async with db.session() as s:
        query = select(ApiKey, Workspace.name).join(Workspace).order_by(ApiKey.created_at)
        if workspace is not None:
            query = query.where(Workspace.name == workspace)
        rows = (await s.execute(query)).all()
    return [KeyInfo(k.id, ws, k.name, k.is_admin, k.created_at) for k, ws in rows]


async def revoke_key(db: Database, key_id: str) -> None:
    async with db.session() as s, s.begin():
        row = await s.get(ApiKey, key_id)
        if row is not None:
            await s.execute(delete(ApiKey).where(ApiKey.id == key_id))
    if row is None:
        raise AdminError(f"no key with id {key_id!r} (see `hutch keys list`)")


async def list_workspaces(db: Database) -> list[WorkspaceInfo]:
    async with db.session() as s:
        counts = dict(
            (
                await s.execute(
                    select(Sandbox.workspace_id, func.count()).group_by(Sandbox.workspace_id)
                )
            ).all()
        )
        rows = (await s.execute(select(Workspace).order_by(Workspace.name))).scalars().all()
    return [
        WorkspaceInfo(
            w.name, counts.get(w.id, 0), w.max_sandboxes, w.max_cpu_millis, w.max_memory_bytes
        )
        for w in rows
    ]


async def set_quota(
    db: Database,
    workspace: str,
    *,
    sandboxes: int | None,
    cpu_millis: int | None,
    memory_bytes: int | None,
    clear: bool = False,
) -> WorkspaceInfo:
    """Set the given limits (others unchanged; ``clear`` unsets all first)."""
    async with db.session() as s, s.begin():
        ws = (await s.execute(select(Workspace).where(Workspace.name == workspace))).scalar()
        if ws is None:
            ws = Workspace(id=uuid.uuid4().hex, name=workspace)
            s.add(ws)
        if clear:
            ws.max_sandboxes = ws.max_cpu_millis = ws.max_memory_bytes = None
        if sandboxes is not None:
            ws.max_sandboxes = sandboxes
        if cpu_millis is not None:
            ws.max_cpu_millis = cpu_millis
        if memory_bytes is not None:
            ws.max_memory_bytes = memory_bytes
    return next(w for w in await list_workspaces(db) if w.name == workspace)
