"""Sandbox lifecycle: records in the store, containers in the runtime, and keeping both in step.

Provisioning runs in a task owned by the manager (not by the request), so a client that goes away
never leaves a half-created sandbox; every exit path either reaches ``ready`` or removes what was
made.

The reaper, a task owned by the manager too, applies the lifetimes of :mod:`._lifetimes`: it
sleeps until the next deadline (or until :meth:`SandboxManager.kick` says a deadline changed),
deletes or stops what is due, and runs at once on start, so deadlines that passed while the
server was down are met right away. It reads the time and waits through an injected
:class:`~hutch.domain.Clock`, so tests move time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import socket
import string
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from starlette.websockets import WebSocket

from hutch.domain import (
    Clock,
    Limits,
    Quotas,
    SandboxGone,
    SandboxRepository,
    SandboxStatus,
    SystemClock,
    WrongState,
)
from hutch.protocol._errors import ErrorType
from hutch.runtime._interface import Runtime, RuntimeError_, SandboxNotFound, SandboxSpec
from hutch.runtime.images import Credentials, Image, ImageError, ImagePuller, ImageStore
from hutch.server._config import ServerConfig
from hutch.server._lifetimes import Action, Deadline, Lifetime, next_deadline
from hutch.server._metrics import Metrics
from hutch.server._registry_auth import TemplateCredentials
from hutch.server._snapshot_store import Snapshots
from hutch.sessions import SessionManager, take_over_commands
from hutch.store import Database, Sandbox, Template

log = logging.getLogger("hutch.server")


def node_id(data_dir: Path) -> str:
    """This server's node id: made at its first start and kept in the data dir, so it survives
    restarts and two servers (each with a data dir of its own) on one database never share it."""
    path = data_dir / "node-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    node = f"{socket.gethostname()[:48]}-{uuid.uuid4().hex}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(node + "\n")
    return node


PROVISIONING, READY, FAILED, STOPPED, DELETING = (
    SandboxStatus.PROVISIONING,
    SandboxStatus.READY,
    SandboxStatus.FAILED,
    SandboxStatus.STOPPED,
    SandboxStatus.DELETING,
)
#: Every status a sandbox may leave for ``deleting`` (all but ``deleting`` itself).
DELETABLE = frozenset(s for s in SandboxStatus if s != DELETING)
#: Seconds between writes of a sandbox's activity to the store (the hot path stays cheap).
TOUCH_INTERVAL = 5.0
#: Seconds between the reaper's looks at a sandbox with an idle TTL while it is busy, so the end
#: of its activity is known to within this much.
BUSY_POLL = 1.0
#: Seconds before the reaper retries after a failure; the longest it ever sleeps.
REAPER_RETRY, REAPER_MAX_SLEEP = 5.0, 60.0
_ALNUM = string.ascii_lowercase + string.digits


def generate_name() -> str:
    return "sandbox-" + "".join(secrets.choice(_ALNUM) for _ in range(8))


@dataclass
class Outcome:
    status: str
    error: ErrorType | None = None
    message: str | None = None
    #: When the status was recorded (None: not recorded by this process).
    updated_at: datetime | None = None


class StartFailed(Exception):
    """A stopped sandbox could not be started; ``error`` says why (it is still stopped)."""

    def __init__(self, error: ErrorType, message: str) -> None:
        super().__init__(message)
        self.error = error


class SandboxManager:
    def __init__(
        self,
        db: Database,
        runtime: Runtime,
        images: ImageStore,
        config: ServerConfig,
        sessions: SessionManager,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.db = db
        #: Every time the lifetimes and the reaper read or wait for (a fake one in tests).
        self.clock: Clock = clock or SystemClock()
        #: The records; every status change is a compare-and-set there.
        self.sandboxes = SandboxRepository(db)
        #: Counts (and logs) the lifecycle transitions below.
        self.metrics = metrics or Metrics()
        self.runtime = runtime
        self.images = images
        self.config = config
        self.sessions = sessions
        #: Sandboxes of other nodes (servers on the same database) are theirs to reconcile
        #: and reap.
        self.node = node_id(config.data_dir)
        self._done: dict[str, asyncio.Future[Outcome]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._touched: dict[str, float] = {}
        self.pulls = ImagePuller(images, config.registry)
        self.quotas = Quotas(
            db, Limits(config.quota_sandboxes, config.quota_cpu_millis, config.quota_memory_bytes)
        )
        self.registry_auth = TemplateCredentials(config.data_dir / "registry-auth")
        self.snapshots = Snapshots(
            db,
            runtime,
            images,
            self.pulls,
            TemplateCredentials(config.data_dir / "snapshot-auth"),
            TemplateCredentials(config.data_dir / "registries"),
        )
        #: Image pull progress of sandboxes still provisioning (their status message).
        self.progress: dict[str, str] = {}
        #: Latest activity per sandbox (the store's copy lags by up to TOUCH_INTERVAL).
        self._active: dict[str, datetime] = {}
        #: Blocking data-plane calls in flight per sandbox (see :meth:`active`).
        self._in_flight: dict[str, int] = {}
        #: Sandboxes the reaper last saw busy.
        self._was_busy: set[str] = set()
        #: Open data-plane WebSockets (exec and tunnel), shared with the request handlers.
        self.sockets: set[WebSocket] = set()
        self._wake = asyncio.Event()
        #: Sandboxes being deleted (a create they cancel answers that, not a failure).
        self._deleting: set[str] = set()
        self._reaper: asyncio.Task[None] | None = None

    def lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    # -- startup / shutdown --------------------------------------------------------------------

    async def reconcile(self) -> None:
        """After a restart: keep running sandboxes, finish the stops and deletes the restart
        interrupted, fail interrupted creates, remove orphans and unused snapshot files.

        Only a sandbox being created or deleted loses its files here: one whose container is
        gone (a stop cut short, a host reboot) is recorded stopped, its files kept.
        """
        await self.sandboxes.claim_unowned(self.node)
        rows = await self.sandboxes.list_node(self.node)
        known = {r.id for r in rows}
        for r in rows:
            if r.status == DELETING:
                await self.destroy(r.id)
            elif r.status in (READY, STOPPED):
                running = await self.runtime.is_running(r.id)
                if r.status == READY and running:
                    # Its commands go on: sessions again, before the idle reaper looks.
                    await take_over_commands(self.sessions, self.runtime, r.id)
                    continue
                if r.status == STOPPED and not running:
                    continue
                # A stop the restart cut short, or a container gone with the host: stopped.
                message = (
                    "Stopped by a restart; start it to continue" if r.status == READY else None
                )
                # WrongState: its files are gone (recorded failed), or its status changed.
                with contextlib.suppress(WrongState, SandboxNotFound):
                    await self._finish_stop(r, message)
            elif r.status == PROVISIONING:
                # A create interrupted by the restart: remove what it made, record the failure.
                await self.runtime.delete(r.id)
                with contextlib.suppress(WrongState, SandboxNotFound):
                    await self._transition(
                        r,
                        FAILED,
                        expected={PROVISIONING},
                        reason="provisioning interrupted by a restart",
                        status_message="Provisioning was interrupted by a server "
                        "restart; delete it and create it again",
                    )
        for orphan in await self.runtime.list_ids() - known:
            log.info("removing orphan sandbox container %s", orphan)
            await self.runtime.delete(orphan)
        await self.snapshots.release_layers()

    async def _finish_stop(self, row: Sandbox, message: str | None = None) -> None:
        """Stop the sandbox's container (idempotent), throw away what a non-persistent one
        wrote, and record it stopped (or failed, when its files are gone).

        The record must still have the status ``row`` was read with (else :class:`WrongState`):
        a stopped one (a container that outlived its stop) keeps it and gets the new times.
        """
        was = SandboxStatus(row.status)
        began = time.monotonic()
        try:
            await self.runtime.stop(row.id)
            if not row.persistent:
                await self.runtime.discard_writes(
                    row.id, snapshot=row.snapshot_id, storage_bytes=row.fs_capacity_bytes
                )
        except (SandboxNotFound, RuntimeError_) as exc:
            # Files gone, or a reset that failed (starting again would bring back its writes).
            log.warning("sandbox %s could not be stopped cleanly: %s", row.name, exc)
            failure = (
                "Its files are gone from the host"
                if isinstance(exc, SandboxNotFound)
                else f"Could not reset its files ({exc})"
            )
            await self._transition(
                row,
                FAILED,
                expected={was},
                reason=failure,
                status_message=f"{failure}; delete it and create a new one",
            )
            raise WrongState(row.name, FAILED, "ready") from None
        now = self.clock.utcnow()
        times = {"status_message": message, "stopped_at": now, "last_active_at": now}
        reason = message or "stop requested"
        if was == STOPPED:
            await self.sandboxes.update(row.id, updated_at=now, **times)
            self.metrics.changed(row, STOPPED, reason, time.monotonic() - began)
        else:
            await self._transition(
                row, STOPPED, expected={was}, reason=reason, began=began, **times
            )

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        if self._reaper is not None:
            tasks.append(self._reaper)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.snapshots.aclose()
        await self.pulls.aclose()

    # -- provisioning --------------------------------------------------------------------------

    def start_provisioning(
        self,
        row: Sandbox,
        *,
        storage_bytes: int | None = None,
        snapshot: str | None = None,
        credentials: Credentials | None = None,
    ) -> asyncio.Future[Outcome]:
        """Create the sandbox's container in the background; ``storage_bytes`` limits its disk
        (None: the server's default); ``snapshot`` is a captured snapshot whose files it starts
        with; ``credentials`` pull its image (else its template's, if any)."""
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._done[row.id] = fut
        self.metrics.provisioning(row)
        task = asyncio.create_task(
            self._provision(row, fut, storage_bytes, snapshot, credentials),
            name=f"provision-{row.name}",
        )
        self._tasks[row.id] = task
        sandbox_id = row.id

        def _forget(_: asyncio.Task[None]) -> None:
            if self._tasks.get(sandbox_id) is task:
                del self._tasks[sandbox_id]

        task.add_done_callback(_forget)
        return fut

    async def _provision(
        self,
        row: Sandbox,
        fut: asyncio.Future[Outcome],
        storage_bytes: int | None,
        snapshot: str | None,
        credentials: Credentials | None,
    ) -> None:
        outcome = Outcome(FAILED, ErrorType.INTERNAL, "provisioning did not finish")
        began = time.monotonic()
        try:
            async with self.lock(row.id):
                try:
                    image = await self.pulls.resolve(
                        row.image,
                        credentials=credentials or self.registry_auth.get(row.template_id),
                        progress=functools.partial(self.progress.__setitem__, row.id),
                    )
                except ImageError as exc:
                    outcome = Outcome(FAILED, ErrorType.IMAGE_PULL, str(exc))
                    return
                finally:
                    self.progress.pop(row.id, None)
                try:
                    await self.runtime.create(
                        dataclasses.replace(
                            self._spec(row, image, storage_bytes), snapshot=snapshot
                        )
                    )
                except Exception as exc:
                    log.exception("sandbox %s failed to start", row.name)
                    outcome = Outcome(
                        FAILED,
                        ErrorType.SANDBOX_CONFIG,
                        f"Sandbox '{row.name}' failed to start: {exc}",
                    )
                    return
                outcome = Outcome(READY)
        except asyncio.CancelledError:
            if row.id in self._deleting:  # the record goes with it: nothing to set
                outcome = Outcome(
                    FAILED,
                    ErrorType.NOT_FOUND,
                    f"Sandbox '{row.name}' was deleted while it was being created",
                )
            raise
        finally:
            if row.id not in self._deleting:
                with contextlib.suppress(Exception):
                    outcome.updated_at = await asyncio.shield(
                        self.sandboxes.transition(
                            row.id,
                            SandboxStatus(outcome.status),
                            expected={PROVISIONING},
                            status_message=outcome.message,
                        )
                    )
            deleted = row.id in self._deleting  # then the delete's transition says it
            status = None if deleted else outcome.status
            self.metrics.provisioned(row, status, outcome.message, time.monotonic() - began)
            if not fut.done():
                fut.set_result(outcome)
            self._done.pop(row.id, None)
            self.kick()  # its idle TTL starts counting now

    async def wait(self, sandbox_id: str, timeout: float) -> Outcome | None:
        """The provisioning outcome, or None if it is not known within ``timeout`` seconds."""
        fut = self._done.get(sandbox_id)
        if fut is None:
            row = await self.sandboxes.get(sandbox_id)
            if row is None:
                return Outcome(FAILED, ErrorType.NOT_FOUND, "sandbox was deleted")
            return Outcome(row.status, None, row.status_message)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return None

    def new_row(
        self,
        workspace_id: str,
        name: str,
        *,
        image: str,
        cpu_millis: int,
        memory_bytes: int,
        template: Template | None,
        ttl: int | None,
        idle_ttl: int | None,
        delete_after_stop: int | None,
        network: str = "none",
    ) -> Sandbox:
        """A record for a new sandbox (``0`` TTLs mean none)."""
        now = self.clock.utcnow()
        return Sandbox(
            created_at=now,
            updated_at=now,
            last_active_at=now,
            id=uuid.uuid4().hex,
            workspace_id=workspace_id,
            name=name,
            template_id=template.id if template else None,
            template_name=template.name if template else None,
            image=image,
            cpu_millis=cpu_millis,
            memory_bytes=memory_bytes,
            network=network,
            status=PROVISIONING,
            ttl_seconds=ttl or None,
            idle_ttl_seconds=idle_ttl or None,
            delete_after_stop_seconds=delete_after_stop or None,
            node=self.node,
        )

    def _spec(self, row: Sandbox, image: Image, storage_bytes: int | None = None) -> SandboxSpec:
        """``storage_bytes`` matters only at creation: the writable layer keeps its limit."""
        return SandboxSpec(
            id=row.id,
            hostname=row.name,
            image=image,
            cpu_millis=row.cpu_millis,
            memory_bytes=row.memory_bytes,
            storage_bytes=storage_bytes,
            pids_limit=self.config.pids_limit,
            network="egress" if row.network == "egress" else "none",
        )

    # -- delete / stop / start -------------------------------------------------------------------

    async def destroy(self, sandbox_id: str) -> None:
        """Remove the container and the record (provisioning in flight is cancelled first)."""
        self._deleting.add(sandbox_id)
        began, row, ok = time.monotonic(), None, False
        try:
            row = await self._destroy(sandbox_id)
            ok = True
        finally:
            self._deleting.discard(sandbox_id)
            self.metrics.deleted(row, ok, time.monotonic() - began)

    async def _destroy(self, sandbox_id: str) -> Sandbox | None:
        """Returns the record as it was before the delete (None: there was none)."""
        task = self._tasks.get(sandbox_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self.lock(sandbox_id):
            row = await self.sandboxes.get(sandbox_id)
            await self.sessions.close_owner(sandbox_id)
            if row is not None:  # the intent first: a crash from here on finishes the delete
                await self._mark_deleting(sandbox_id)
            await self.runtime.delete(sandbox_id)
            await self.sandboxes.delete(sandbox_id)
            if row is not None and row.snapshot_id and not row.persistent:
                await self.snapshots.release_layers({row.snapshot_id})
        for table in (self._locks, self._touched, self._active, self._in_flight):
            table.pop(sandbox_id, None)
        self._was_busy.discard(sandbox_id)
        return row

    async def _mark_deleting(self, sandbox_id: str) -> None:
        """Record the intent to delete, from whatever status; already ``deleting`` (a delete
        retried, or another writer's) or gone is fine: deleting is idempotent."""
        with contextlib.suppress(SandboxGone):
            try:
                await self.sandboxes.transition(sandbox_id, DELETING, expected=DELETABLE)
            except WrongState as exc:
                if exc.current != DELETING:  # pragma: no cover - DELETABLE is every other status
                    raise

    async def stop(self, sandbox_id: str) -> Sandbox:
        """Stop a ready sandbox (its commands are killed, its files kept, or reset to its first
        ones when it is not persistent); returns its record.

        Stopping a stopped sandbox changes nothing. Raises :class:`WrongState` in any other
        state, :class:`SandboxNotFound` if its record is gone.
        """
        async with self.lock(sandbox_id):
            row = await self._row(sandbox_id)
            if row.status == STOPPED:
                return row
            if row.status != READY:
                raise WrongState(row.name, row.status, "ready")
            await self.sessions.close_owner(sandbox_id)
            await self._finish_stop(row)
            self._active[sandbox_id] = self.clock.utcnow()
            self._was_busy.discard(sandbox_id)
            row = await self._row(sandbox_id)
        self.kick()
        return row

    async def start(self, sandbox_id: str) -> Sandbox:
        """Start a stopped sandbox with its files as they were; returns its record.

        Starting a ready sandbox changes nothing. Raises :class:`WrongState` in any other
        state, :class:`StartFailed` when it cannot start (it stays stopped),
        :class:`~hutch.domain.QuotaExceeded` when its CPU and memory would not fit its
        workspace's quota (they count again once it runs).
        """
        workspace_id = (await self._row(sandbox_id)).workspace_id
        # The workspace's quota lock first, as a create takes it: held until the start is
        # recorded, so two starts cannot both take the last CPU.
        async with self.quotas.lock(workspace_id), self.lock(sandbox_id):
            row = await self._row(sandbox_id)
            if row.status == READY:
                return row
            if row.status != STOPPED:
                raise WrongState(row.name, row.status, "stopped")
            await self.quotas.check(workspace_id, row.cpu_millis, row.memory_bytes, new=False)
            began = time.monotonic()
            try:
                image = await asyncio.to_thread(self.images.get, row.image)
            except ImageError as exc:
                raise StartFailed(
                    ErrorType.IMAGE_PULL, f"Image '{row.image}' is not available: {exc}"
                ) from exc
            try:
                await self.runtime.start(self._spec(row, image))
            except SandboxNotFound:
                message = "Its files are gone from the host; delete it and create a new one"
                await self._transition(
                    row, FAILED, expected={STOPPED}, reason=message, status_message=message
                )
                raise StartFailed(ErrorType.SANDBOX_CONFIG, message) from None
            except RuntimeError_ as exc:
                log.warning("sandbox %s failed to start: %s", row.name, exc)
                raise StartFailed(
                    ErrorType.SANDBOX_CONFIG, f"Sandbox '{row.name}' failed to start: {exc}"
                ) from exc
            now = self.clock.utcnow()
            # Starting is activity: the idle TTL counts from here.
            await self._transition(
                row,
                READY,
                expected={STOPPED},
                reason="start requested",
                began=began,
                status_message=None,
                stopped_at=None,
                last_active_at=now,
            )
            self._active[sandbox_id] = now
            row = await self._row(sandbox_id)
        self.kick()
        return row

    async def row(self, sandbox_id: str) -> Sandbox:
        """The sandbox's record as stored now; :class:`SandboxNotFound` if it is gone."""
        return await self._row(sandbox_id)

    async def _row(self, sandbox_id: str) -> Sandbox:
        row = await self.sandboxes.get(sandbox_id)
        if row is None:
            raise SandboxNotFound(f"sandbox {sandbox_id} was deleted")
        return row

    async def _transition(
        self,
        row: Sandbox,
        to: SandboxStatus,
        *,
        expected: set[SandboxStatus],
        reason: str,
        began: float | None = None,
        **values: object,
    ) -> datetime:
        """:meth:`SandboxRepository.transition`, logged (with ``reason``, and the time since
        ``began`` when given) once it happened; a record gone meanwhile is reported as the
        runtime's :class:`SandboxNotFound` (what the handlers answer 404 for)."""
        try:
            at = await self.sandboxes.transition(row.id, to, expected=expected, **values)
        except SandboxGone as exc:
            raise SandboxNotFound(str(exc)) from None
        seconds = None if began is None else time.monotonic() - began
        self.metrics.changed(row, to, reason, seconds)
        return at

    # -- activity ------------------------------------------------------------------------------

    async def touch(self, sandbox_id: str, *, force: bool = False) -> None:
        """Record activity (commands, file I/O, tunnels) for the idle TTL.

        Written through to the store at most every ``TOUCH_INTERVAL`` seconds per sandbox
        (unless ``force``), so the hot exec path does not pay a database commit per call.
        """
        self._active[sandbox_id] = when = self.clock.utcnow()
        now = self.clock.monotonic()
        if not force and now - self._touched.get(sandbox_id, -TOUCH_INTERVAL) < TOUCH_INTERVAL:
            return
        self._touched[sandbox_id] = now
        await self.sandboxes.update(sandbox_id, last_active_at=when)

    @contextlib.asynccontextmanager
    async def active(self, sandbox_id: str) -> AsyncIterator[None]:
        """Marks the sandbox busy while a blocking data-plane call (``/execute``) runs."""
        await self.touch(sandbox_id)
        self._in_flight[sandbox_id] = self._in_flight.get(sandbox_id, 0) + 1
        try:
            yield
        finally:
            left = self._in_flight.get(sandbox_id, 1) - 1
            if left > 0:
                self._in_flight[sandbox_id] = left
            else:
                self._in_flight.pop(sandbox_id, None)
            await self.touch(sandbox_id)

    def busy(self, sandbox_id: str) -> bool:
        """A command runs or has a client attached, a tunnel is open, or ``/execute`` runs."""
        if self._in_flight.get(sandbox_id):
            return True
        if any(s.running or s.subscribers for s in self.sessions.list(sandbox_id)):
            return True
        return any(ws.path_params.get("sandbox_id") == sandbox_id for ws in self.sockets)

    def last_active(self, row: Sandbox) -> datetime:
        """The latest activity known for the sandbox (this process's, or the store's)."""
        mine = self._active.get(row.id)
        return row.last_active_at if mine is None else max(mine, row.last_active_at)

    def lifetime(self, row: Sandbox) -> Lifetime:
        return Lifetime(
            created_at=row.created_at,
            last_active_at=self.last_active(row),
            ttl_seconds=row.ttl_seconds,
            idle_ttl_seconds=row.idle_ttl_seconds,
            delete_after_stop_seconds=row.delete_after_stop_seconds,
            ready=row.status == READY,
            provisioning=row.status == PROVISIONING,
            stopped_at=row.stopped_at if row.status == STOPPED else None,
            idle_stops=row.template_id is None,
        )

    # -- reaper --------------------------------------------------------------------------------

    def start_reaper(self) -> None:
        """Start the reaper task (it runs a first pass at once)."""
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever(), name="reaper")

    def kick(self) -> None:
        """A deadline may have changed (create, update, stop, start): look again now."""
        self._wake.set()

    async def _reap_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                wait = await self.reap_once()
            except Exception:
                log.exception("the sandbox reaper failed; retrying in %.0fs", REAPER_RETRY)
                wait = REAPER_RETRY
            timer = self.clock.call_later(max(wait, 0.0), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    async def reap_once(self) -> float:
        """Delete or stop every sandbox whose deadline passed; seconds until the next one."""
        rows = await self.sandboxes.list_node(self.node, with_lifetimes=True)
        wake = REAPER_MAX_SLEEP
        for row in rows:
            if row.idle_ttl_seconds and row.status == READY:  # others are idle by definition
                if self.busy(row.id):
                    self._was_busy.add(row.id)
                    await self.touch(row.id)
                    wake = min(wake, BUSY_POLL)
                elif row.id in self._was_busy:
                    # Its activity ended within the last BUSY_POLL seconds: store when.
                    self._was_busy.discard(row.id)
                    await self.touch(row.id, force=True)
            deadline = next_deadline(self.lifetime(row))
            if deadline is None:
                continue
            left = (deadline.at - self.clock.utcnow()).total_seconds()
            if left > 0:
                wake = min(wake, left)
                continue
            try:
                await self._expire(row, deadline)
            except Exception:
                log.exception("could not %s expired sandbox %s", deadline.action, row.name)
                wake = min(wake, REAPER_RETRY)
        return wake

    async def _expire(self, row: Sandbox, deadline: Deadline) -> None:
        # Look again: a PATCH or some activity may have moved the deadline meanwhile.
        try:
            row = await self._row(row.id)
        except SandboxNotFound:
            return
        due = next_deadline(self.lifetime(row))
        if due is None or due.at > self.clock.utcnow():
            return
        deadline = due
        log.info(
            "%s sandbox %s: its %s=%s passed",
            "deleting" if deadline.action == Action.DELETE else "stopping",
            row.name,
            deadline.reason,
            getattr(row, deadline.reason),
        )
        with self.metrics.reaping(deadline):
            if deadline.action == Action.DELETE:
                await self.destroy(row.id)
            else:
                try:
                    await self.stop(row.id)
                except (WrongState, SandboxNotFound):  # deleted, or failed, meanwhile
                    return
            self.metrics.reaped(deadline)
