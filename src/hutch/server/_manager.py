"""Sandbox lifecycle: records in the store, containers in the runtime, and keeping both in step.

Provisioning runs in a task owned by the manager (not by the request), so a client that goes away
never leaves a half-created sandbox; every exit path either reaches ``ready`` or removes what was
made.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import string
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import delete, select, update

from hutch.protocol._errors import ErrorType
from hutch.runtime._interface import Runtime, SandboxSpec
from hutch.runtime._resources import parse_cpu, parse_memory
from hutch.runtime.images import ImageError, ImagePuller, ImageStore
from hutch.server._config import ServerConfig
from hutch.server._registry_auth import TemplateCredentials
from hutch.sessions import SessionManager
from hutch.store import Database, Sandbox, Template, utcnow

log = logging.getLogger("hutch.server")

PROVISIONING, READY, FAILED = "provisioning", "ready", "failed"
TOUCH_INTERVAL = 5.0
_ALNUM = string.ascii_lowercase + string.digits


def generate_name() -> str:
    return "sandbox-" + "".join(secrets.choice(_ALNUM) for _ in range(8))


@dataclass
class Outcome:
    status: str
    error: ErrorType | None = None
    message: str | None = None


class SandboxManager:
    def __init__(
        self,
        db: Database,
        runtime: Runtime,
        images: ImageStore,
        config: ServerConfig,
        sessions: SessionManager,
    ) -> None:
        self.db = db
        self.runtime = runtime
        self.images = images
        self.config = config
        self.sessions = sessions
        self._done: dict[str, asyncio.Future[Outcome]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._touched: dict[str, float] = {}
        self.pulls = ImagePuller(images, config.registry)
        self.registry_auth = TemplateCredentials(config.data_dir / "registry-auth")
        #: Image pull progress of sandboxes still provisioning (their status message).
        self.progress: dict[str, str] = {}

    def lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    # -- startup / shutdown --------------------------------------------------------------------

    async def reconcile(self) -> None:
        """After a restart: keep running sandboxes, fail vanished ones, remove orphans."""
        async with self.db.session() as s:
            rows = (await s.execute(select(Sandbox))).scalars().all()
        known = {r.id for r in rows}
        for r in rows:
            if r.status == READY and not await self.runtime.is_running(r.id):
                await self._set_status(
                    r.id,
                    FAILED,
                    "The sandbox's container is gone (the host restarted?); "
                    "delete it and create a new one",
                )
                await self.runtime.delete(r.id)
            elif r.status == PROVISIONING:
                # A create interrupted by the restart: remove what it made, record the failure.
                await self.runtime.delete(r.id)
                await self._set_status(
                    r.id,
                    FAILED,
                    "Provisioning was interrupted by a server "
                    "restart; delete it and create it again",
                )
        for orphan in await self.runtime.list_ids() - known:
            log.info("removing orphan sandbox container %s", orphan)
            await self.runtime.delete(orphan)

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.pulls.aclose()

    # -- provisioning --------------------------------------------------------------------------

    def start_provisioning(
        self, row: Sandbox, *, storage_bytes: int | None = None
    ) -> asyncio.Future[Outcome]:
        """Create the sandbox's container in the background; ``storage_bytes`` limits its disk
        (None: the server's default)."""
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._done[row.id] = fut
        task = asyncio.create_task(
            self._provision(row, fut, storage_bytes), name=f"provision-{row.name}"
        )
        self._tasks[row.id] = task
        sandbox_id = row.id

        def _forget(_: asyncio.Task[None]) -> None:
            if self._tasks.get(sandbox_id) is task:
                del self._tasks[sandbox_id]

        task.add_done_callback(_forget)
        return fut

    async def _provision(
        self, row: Sandbox, fut: asyncio.Future[Outcome], storage_bytes: int | None
    ) -> None:
        outcome = Outcome(FAILED, ErrorType.INTERNAL, "provisioning did not finish")
        try:
            async with self.lock(row.id):
                try:
                    image = await self.pulls.resolve(
                        row.image,
                        credentials=self.registry_auth.get(row.template_id),
                        progress=functools.partial(self.progress.__setitem__, row.id),
                    )
                except ImageError as exc:
                    outcome = Outcome(FAILED, ErrorType.IMAGE_PULL, str(exc))
                    return
                finally:
                    self.progress.pop(row.id, None)
                spec = SandboxSpec(
                    id=row.id,
                    hostname=row.name,
                    image=image,
                    cpu_millis=row.cpu_millis,
                    memory_bytes=row.memory_bytes,
                    storage_bytes=storage_bytes,
                    pids_limit=self.config.pids_limit,
                    network="egress" if row.network == "egress" else "none",
                )
                try:
                    await self.runtime.create(spec)
                except Exception as exc:
                    log.exception("sandbox %s failed to start", row.name)
                    outcome = Outcome(
                        FAILED,
                        ErrorType.SANDBOX_CONFIG,
                        f"Sandbox '{row.name}' failed to start: {exc}",
                    )
                    return
                outcome = Outcome(READY)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._set_status(row.id, outcome.status, outcome.message))
            if not fut.done():
                fut.set_result(outcome)
            self._done.pop(row.id, None)

    async def wait(self, sandbox_id: str, timeout: float) -> Outcome | None:
        """The provisioning outcome, or None if it is not known within ``timeout`` seconds."""
        fut = self._done.get(sandbox_id)
        if fut is None:
            async with self.db.session() as s:
                row = await s.get(Sandbox, sandbox_id)
            if row is None:
                return Outcome(FAILED, ErrorType.NOT_FOUND, "sandbox was deleted")
            return Outcome(row.status, None, row.status_message)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return None

    async def _set_status(self, sandbox_id: str, status: str, message: str | None) -> None:
        async with self.db.session() as s, s.begin():
            await s.execute(
                update(Sandbox)
                .where(Sandbox.id == sandbox_id)
                .values(status=status, status_message=message, updated_at=utcnow())
            )

    # -- create / delete -----------------------------------------------------------------------

    @staticmethod
    def new_row(
        workspace_id: str, name: str, tpl: Template, ttl: int | None, idle_ttl: int | None
    ) -> Sandbox:
        return Sandbox(
            id=uuid.uuid4().hex,
            workspace_id=workspace_id,
            name=name,
            template_id=tpl.id,
            template_name=tpl.name,
            image=tpl.image,
            cpu_millis=parse_cpu(tpl.cpu),
            memory_bytes=parse_memory(tpl.memory),
            network=tpl.network,
            status=PROVISIONING,
            ttl_seconds=ttl or None,
            idle_ttl_seconds=idle_ttl or None,
        )

    async def destroy(self, sandbox_id: str) -> None:
        """Remove the container and the record (provisioning in flight is cancelled first)."""
        task = self._tasks.get(sandbox_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self.lock(sandbox_id):
            await self.sessions.close_owner(sandbox_id)
            await self.runtime.delete(sandbox_id)
            async with self.db.session() as s, s.begin():
                await s.execute(delete(Sandbox).where(Sandbox.id == sandbox_id))
        self._locks.pop(sandbox_id, None)
        self._touched.pop(sandbox_id, None)

    async def touch(self, sandbox_id: str) -> None:
        """Record activity (commands, file I/O) for the idle TTL.

        Written through to the store at most every ``TOUCH_INTERVAL`` seconds per sandbox, so the
        hot exec path does not pay a database commit per call.
        """
        now = time.monotonic()
        if now - self._touched.get(sandbox_id, -TOUCH_INTERVAL) < TOUCH_INTERVAL:
            return
        self._touched[sandbox_id] = now
        async with self.db.session() as s, s.begin():
            await s.execute(
                update(Sandbox).where(Sandbox.id == sandbox_id).values(last_active_at=utcnow())
            )
