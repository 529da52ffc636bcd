"""Lifetimes on a fake clock: the manager (in this process, on real runc containers) reads the
time and sleeps through an injected clock, so these tests move time instead of waiting for it.
The reaper deletes at the ttl deadline and not a moment before; an idle sandbox made without a
template is stopped, then deleted ``delete_after_stop_seconds`` later; a deadline that passed
while the server was down is met as it starts, and the reaper's sleep ends when time moves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from hutch.runtime.images import ImageStore
from hutch.runtime.runc import RuncRuntime
from hutch.server._config import ServerConfig
from hutch.server._lifetimes import expires_at
from hutch.server._manager import SandboxManager
from hutch.server._metrics import Metrics
from hutch.server._schemas import sandbox_json
from hutch.sessions import SessionManager
from hutch.store import Database, Sandbox, Workspace, utcnow
from tests.conftest import TIME_SCALE, data_dir_with_busybox
from tests.fakeclock import FakeWallClock

pytestmark = [pytest.mark.root, pytest.mark.asyncio(loop_scope="session")]


@dataclass
class Host:
    """What a server's manager stands on: a database, the runtime, the images, a fake clock."""

    data: Path
    db: Database
    runtime: RuncRuntime
    clock: FakeWallClock

    def manager(self) -> SandboxManager:
        """A manager as a server starting on this host would make (reconcile not yet run)."""
        return SandboxManager(
            self.db,
            self.runtime,
            ImageStore(self.data / "images"),
            ServerConfig(data_dir=self.data),
            SessionManager(),
            Metrics(),
            clock=self.clock,
        )

    async def create(self, mgr: SandboxManager, name: str, **lifetimes: int) -> Sandbox:
        """A ready sandbox of the busybox image, made without a template."""
        row = mgr.new_row(
            "w",
            name,
            image="local/busybox",
            cpu_millis=250,
            memory_bytes=64 << 20,
            template=None,
            ttl=lifetimes.get("ttl"),
            idle_ttl=lifetimes.get("idle_ttl"),
            delete_after_stop=lifetimes.get("delete_after_stop"),
        )
        await mgr.sandboxes.insert(row)
        outcome = await mgr.start_provisioning(row)
        assert outcome.status == "ready", outcome
        return await mgr.sandboxes.require(row.id)

    async def gone(self, row: Sandbox) -> bool:
        """Its record and its container are both gone."""
        no_row = await self.db_row(row) is None
        return no_row and row.id not in await self.runtime.list_ids()

    async def db_row(self, row: Sandbox) -> Sandbox | None:
        async with self.db.session() as s:
            return await s.get(Sandbox, row.id)


@pytest.fixture(scope="module")
async def machine(
    tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path
) -> AsyncIterator[tuple[Path, Database, RuncRuntime]]:
    """The module's data dir (busybox imported), database (workspace ``w``) and runtime."""
    data = data_dir_with_busybox(tmp_path_factory.mktemp("clock"), busybox_tar)
    db = Database.in_dir(data)
    await db.migrate()
    async with db.session() as s, s.begin():
        s.add(Workspace(id="w", name="w"))
    runtime = RuncRuntime(data)
    try:
        yield data, db, runtime
    finally:
        for sandbox_id in await runtime.list_ids():
            await runtime.delete(sandbox_id)
        await runtime.aclose()
        await db.aclose()


@pytest.fixture
def host(machine: tuple[Path, Database, RuncRuntime]) -> Host:
    """The module's machine, with a fake clock of the test's own starting now."""
    return Host(*machine, FakeWallClock(utcnow()))


def wire_seconds(body: dict[str, str], later: str, earlier: str) -> float:
    """Seconds between two timestamps of a sandbox as the API answers it."""
    at = {k: datetime.fromisoformat(body[k].replace("Z", "+00:00")) for k in (later, earlier)}
    return (at[later] - at[earlier]).total_seconds()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> bool:
    """Poll ``check`` until true (the reaper task runs on its own) or ``timeout`` real seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout * TIME_SCALE
    while loop.time() < end:
        if await check():
            return True
        await asyncio.sleep(0.02)
    return await check()


async def test_ttl_deletes_at_the_deadline(host: Host) -> None:
    """ttl_seconds=2: expires_at is creation + 2 s; at 1.9 s the sandbox is kept (the reaper
    would look again 0.1 s later); at 2 s it and its container are gone."""
    mgr = host.manager()
    try:
        row = await host.create(mgr, "ttl", ttl=2)
        body = sandbox_json(row, "http://hutch.test/dp", mgr.lifetime(row))
        assert body["ttl_seconds"] == 2 and wire_seconds(body, "expires_at", "created_at") == 2
        assert await mgr.reap_once() == pytest.approx(2.0)
        host.clock.advance(1.9)
        assert await mgr.reap_once() == pytest.approx(0.1)
        assert await host.db_row(row) is not None and await host.runtime.is_running(row.id)
        host.clock.advance(0.1)
        await mgr.reap_once()
        assert await host.gone(row)
    finally:
        await mgr.aclose()


async def test_without_template_idle_stops_then_deletes(host: Host) -> None:
    """idle_ttl_seconds=2, delete_after_stop_seconds=2, no template: after 2 idle seconds it is
    stopped (its container too, stopped_at recorded, expires_at 2 s after that), and 2 s later
    deleted."""
    mgr = host.manager()
    try:
        row = await host.create(mgr, "idle", idle_ttl=2, delete_after_stop=2)
        body = sandbox_json(row, "http://hutch.test/dp", mgr.lifetime(row))
        assert (body["template_name"], body["delete_after_stop_seconds"]) == (None, 2)
        assert body["expires_at"] is None  # idleness stops it; only a stopped one expires
        assert await mgr.reap_once() == pytest.approx(2.0)
        host.clock.advance(2)
        await mgr.reap_once()
        stopped = await mgr.sandboxes.require(row.id)
        assert (stopped.status, stopped.stopped_at) == ("stopped", host.clock.utcnow())
        assert not await host.runtime.is_running(row.id)
        body = sandbox_json(stopped, "http://hutch.test/dp", mgr.lifetime(stopped))
        assert wire_seconds(body, "expires_at", "stopped_at") == 2
        assert await mgr.reap_once() == pytest.approx(2.0)
        host.clock.advance(2)
        await mgr.reap_once()
        assert await host.gone(row)
    finally:
        await mgr.aclose()


async def test_reaper_meets_missed_deadlines_then_wakes_on_the_clock(host: Host) -> None:
    """A ttl that ran out while the server was stopped deletes the sandbox as the next one
    starts; one that did not is kept with the same expiry, until time moves past it: the
    reaper task then wakes on the clock and deletes it too."""
    first = host.manager()
    try:
        short = await host.create(first, "short", ttl=3)
        long = await host.create(first, "long", ttl=3600)
    finally:
        await first.aclose()  # the server stops; its containers keep running
    host.clock.advance(3.5)
    mgr = host.manager()
    try:
        await mgr.reconcile()
        mgr.start_reaper()
        assert await eventually(lambda: host.gone(short))
        kept = await mgr.sandboxes.require(long.id)
        assert kept.status == "ready" and await host.runtime.is_running(long.id)
        assert expires_at(mgr.lifetime(kept)) == expires_at(first.lifetime(long))

        async def reaper_asleep() -> bool:
            return host.clock.pending == 1

        assert await eventually(reaper_asleep)
        host.clock.advance(3600)
        assert await eventually(lambda: host.gone(long))
    finally:
        await mgr.aclose()
