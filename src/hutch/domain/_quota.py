"""Workspaces' quotas: how many sandboxes, and how much CPU and memory they may hold at once.

Quotas are per workspace (``hutch workspaces quota``); a limit left unset falls back to the
server's default (``hutch serve --quota-sandboxes/--quota-cpu/--quota-memory``), and with neither
there is no limit. A sandbox counts from its creation until it is deleted; a stopped one still
counts toward the number of sandboxes but holds no CPU or memory.

The manager checks a start (``SandboxManager.start``); a create is checked by its route, which
reads the quota on the connection it reads the sandbox's origin with.

A create or start that would go past a limit raises :class:`~hutch.domain.QuotaExceeded`,
answered 429 with ``detail.quota_type`` (``sandboxes``, ``cpu`` or ``memory``) next to a message
the langsmith SDKs classify by its words (``QuotaExceededError.quota_type``, protocol.md §2):
the sandbox-count message names "sandbox" and "limit"; the CPU message names "cpu" but not
"sandbox"; the memory message names "memory" but neither of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from hutch.domain._errors import QuotaExceeded
from hutch.domain._status import SandboxStatus
from hutch.store import Database, Sandbox, Workspace

STOPPED = SandboxStatus.STOPPED
FAILED = SandboxStatus.FAILED


@dataclass(frozen=True)
class Limits:
    sandboxes: int | None = None
    cpu_millis: int | None = None
    memory_bytes: int | None = None


def _cores(millis: int) -> str:
    return f"{millis / 1000:g}"


def _mib(size: int) -> str:
    return f"{size // (1024 * 1024)}Mi"


class Quotas:
    """Checks a new sandbox against its workspace's limits; one check at a time per workspace, so
    that two concurrent creates cannot both take the last slot."""

    def __init__(self, db: Database, default: Limits) -> None:
        self._db = db
        self._default = default
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def lock(self, workspace_id: str) -> asyncio.Lock:
        return self._locks[workspace_id]

    async def limits(self, workspace_id: str, session: AsyncSession | None = None) -> Limits:
        async with contextlib.nullcontext(session) if session else self._db.session() as s:
            ws = await s.get(Workspace, workspace_id)
        d = self._default
        if ws is None:
            return d
        return Limits(
            ws.max_sandboxes if ws.max_sandboxes is not None else d.sandboxes,
            ws.max_cpu_millis if ws.max_cpu_millis is not None else d.cpu_millis,
            ws.max_memory_bytes if ws.max_memory_bytes is not None else d.memory_bytes,
        )

    async def check(
        self,
        workspace_id: str,
        cpu_millis: int | None,
        memory_bytes: int | None,
        *,
        new: bool,
        session: AsyncSession | None = None,
    ) -> None:
        """Raise :class:`QuotaExceeded` if one more sandbox (``new``), or one more running one,
        would not fit.

        Call with :meth:`lock` held, and keep it until the sandbox's row is written. With
        ``session``, its reads share that session (one connection for a whole create).
        """
        limits = await self.limits(workspace_id, session)
        if limits == Limits():
            return
        async with contextlib.nullcontext(session) if session else self._db.session() as s:
            used = (
                await s.execute(
                    select(
                        func.coalesce(func.sum(Sandbox.cpu_millis), 0),
                        func.coalesce(func.sum(Sandbox.memory_bytes), 0),
                    ).where(
                        Sandbox.workspace_id == workspace_id,
                        Sandbox.status.not_in((STOPPED, FAILED)),
                    )
                )
            ).one()
            cpu, memory = int(used[0] or 0), int(used[1] or 0)
            if new:
                total = (
                    await s.execute(
                        select(func.count()).where(
                            Sandbox.workspace_id == workspace_id, Sandbox.status != FAILED
                        )
                    )
                ).scalar_one()
        if new and limits.sandboxes is not None and total + 1 > limits.sandboxes:
            raise QuotaExceeded(
                "sandboxes",
                f"Sandbox count limit reached: this workspace has {total} of its "
                f"{limits.sandboxes} sandboxes; delete one before creating another",
            )
        if limits.cpu_millis is not None and cpu + (cpu_millis or 0) > limits.cpu_millis:
            raise QuotaExceeded(
                "cpu",
                f"CPU quota exceeded: {_cores(cpu)} cores are in use and this needs "
                f"{_cores(cpu_millis or 0)} more, over the workspace's "
                f"{_cores(limits.cpu_millis)}; stop or delete one, or use a template with less cpu",
            )
        if limits.memory_bytes is not None and memory + (memory_bytes or 0) > limits.memory_bytes:
            raise QuotaExceeded(
                "memory",
                f"Memory quota exceeded: {_mib(memory)} is in use and this needs "
                f"{_mib(memory_bytes or 0)} more, over the workspace's "
                f"{_mib(limits.memory_bytes)}; stop or delete one, or use a smaller template",
            )
