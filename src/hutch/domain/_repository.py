"""Sandbox records: reads, inserts, and status changes by compare-and-set.

The database is the arbiter of a sandbox's status. A status change is one
``UPDATE … WHERE id = :id AND status IN (:expected…)``; its row count says whether this writer won.
Two writers (two requests, or two servers on one PostgreSQL) that both find a sandbox ``ready``
cannot both move it: the second one's update matches no row and it gets :class:`WrongState`
naming the status the first one wrote. Per-process locks still serialise the runtime work around
a change; they no longer decide it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, or_, select, update

from hutch.domain._errors import SandboxGone, WrongState
from hutch.domain._status import SandboxStatus, check_transition
from hutch.store import Database, Sandbox, utcnow


class SandboxRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- reads -----------------------------------------------------------------------------------

    async def get(self, sandbox_id: str) -> Sandbox | None:
        async with self._db.session() as s:
            return await s.get(Sandbox, sandbox_id)

    async def require(self, sandbox_id: str) -> Sandbox:
        """The record; :class:`SandboxGone` if there is none."""
        row = await self.get(sandbox_id)
        if row is None:
            raise SandboxGone(sandbox_id)
        return row

    async def in_workspace(self, workspace_id: str, sandbox_id: str) -> Sandbox | None:
        """The record by id, only if it belongs to ``workspace_id``."""
        async with self._db.session() as s:
            return (
                await s.execute(
                    select(Sandbox).where(
                        Sandbox.id == sandbox_id, Sandbox.workspace_id == workspace_id
                    )
                )
            ).scalar()

    async def by_name(self, workspace_id: str, name: str) -> Sandbox | None:
        async with self._db.session() as s:
            return (
                await s.execute(
                    select(Sandbox).where(
                        Sandbox.workspace_id == workspace_id, Sandbox.name == name
                    )
                )
            ).scalar()

    async def list_workspace(self, workspace_id: str) -> list[Sandbox]:
        """The workspace's sandboxes, oldest first."""
        async with self._db.session() as s:
            rows = await s.execute(
                select(Sandbox)
                .where(Sandbox.workspace_id == workspace_id)
                .order_by(Sandbox.created_at)
            )
            return list(rows.scalars())

    async def list_node(self, node: str, *, with_lifetimes: bool = False) -> list[Sandbox]:
        """The sandboxes ``node`` runs (``with_lifetimes``: only those with a TTL of any kind)."""
        query = select(Sandbox).where(Sandbox.node == node)
        if with_lifetimes:
            query = query.where(
                or_(
                    Sandbox.ttl_seconds.is_not(None),
                    Sandbox.idle_ttl_seconds.is_not(None),
                    Sandbox.delete_after_stop_seconds.is_not(None),
                )
            )
        async with self._db.session() as s:
            return list((await s.execute(query)).scalars())

    # -- writes ----------------------------------------------------------------------------------

    async def insert(self, row: Sandbox) -> None:
        """Write a new record (``IntegrityError`` when its name is taken in its workspace)."""
        if row.status != SandboxStatus.PROVISIONING:
            raise ValueError(f"a new sandbox starts provisioning, not {row.status}")
        async with self._db.session() as s, s.begin():
            s.add(row)

    async def claim_unowned(self, node: str) -> None:
        """Rows from before nodes were recorded belong to the only server there was."""
        async with self._db.session() as s, s.begin():
            await s.execute(update(Sandbox).where(Sandbox.node.is_(None)).values(node=node))

    async def transition(
        self,
        sandbox_id: str,
        to: SandboxStatus,
        *,
        expected: Iterable[SandboxStatus],
        **values: object,
    ) -> datetime:
        """Move the sandbox to ``to`` if its status is one of ``expected``, writing ``values``
        with it; returns the ``updated_at`` written.

        Raises :class:`~hutch.domain.IllegalTransition` for an edge the table lacks (before
        touching the database), :class:`WrongState` naming the current status when the record
        is in none of ``expected``, :class:`SandboxGone` when it is gone.
        """
        froms = frozenset(SandboxStatus(e) for e in expected)
        check_transition(froms, to)
        if "status" in values or "updated_at" in values:
            raise ValueError("transition() writes status and updated_at itself")
        now = utcnow()
        async with self._db.session() as s, s.begin():
            result = await s.execute(
                update(Sandbox)
                .where(Sandbox.id == sandbox_id, Sandbox.status.in_([f.value for f in froms]))
                .values(status=to.value, updated_at=now, **values)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                return now
            current = (
                await s.execute(
                    select(Sandbox.name, Sandbox.status).where(Sandbox.id == sandbox_id)
                )
            ).one_or_none()
        if current is None:
            raise SandboxGone(sandbox_id)
        raise WrongState(current.name, current.status, froms)

    async def update(self, sandbox_id: str, **values: object) -> None:
        """Write fields other than the status (activity, messages); no-op if the record is gone."""
        if "status" in values:
            raise ValueError("status changes go through transition()")
        async with self._db.session() as s, s.begin():
            await s.execute(
                update(Sandbox)
                .where(Sandbox.id == sandbox_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    async def delete(self, sandbox_id: str) -> None:
        async with self._db.session() as s, s.begin():
            await s.execute(delete(Sandbox).where(Sandbox.id == sandbox_id))
