"""Snapshots: immutable root filesystems that sandboxes boot from (the 0.7.33+ SDKs' model).

A snapshot is an image reference, and when it was captured from a sandbox also a layer the runtime
keeps under the snapshot's id (a read-only copy-on-write copy of that sandbox's writable layer;
see :meth:`hutch.runtime._interface.Runtime.capture`). Booting from one clones that layer, so a
create copies nothing whatever the snapshot's size.

* **Ids** are UUIDs and never change. **Names** group snapshots; **tags** (``name:tag``) are
  mutable pointers to one snapshot each: publishing a tag again moves it, and the snapshot it
  left stays addressable by id.
* **References** (``GET /snapshots/{ref}``, ``snapshot`` on create): an id, ``name:tag``, or a bare
  name meaning ``name:latest``, else the newest ready snapshot of that name.
* **Status** goes ``building`` → ``ready`` or ``failed`` (with ``status_message``). Building one
  from an image resolves (pulls if needed) the image; capturing takes milliseconds.
* **Deleting** a snapshot (by id or reference) removes it and its tags at once, even while
  sandboxes booted from it run: each has its own clone of the files, so none breaks.

This module is the domain logic (no HTTP); :mod:`hutch.server._snapshots` serves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hutch.protocol._errors import ErrorType
from hutch.protocol._exec import RunConfig
from hutch.runtime._interface import Runtime, RuntimeError_, SandboxNotFound
from hutch.runtime.images import Credentials, Image, ImageError, ImagePuller, ImageStore
from hutch.server._registry_auth import TemplateCredentials
from hutch.store import Database, Sandbox, Snapshot, SnapshotTag, contains_ci, utcnow

log = logging.getLogger("hutch.server")

BUILDING, READY, FAILED = "building", "ready", "failed"
NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
NAME_HINT = (
    "use 1-128 lowercase letters, digits, '.', '_' and '-', starting and ending with a letter "
    "or digit"
)
TAG_HINT = "use 1-128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
SNAPSHOT_HINT = "list them with list_snapshots()"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class SnapshotError(Exception):
    """A request about snapshots that cannot be served; ``error`` is its wire type."""

    def __init__(self, error: ErrorType, message: str) -> None:
        super().__init__(message)
        self.error = error


def check_name(name: str, what: str = "snapshot name") -> str:
    if not NAME.match(name):
        raise SnapshotError(ErrorType.VALIDATION, f"{name!r} is not a valid {what}: {NAME_HINT}")
    return name


def check_tag(tag: str) -> str:
    if not TAG.match(tag):
        raise SnapshotError(ErrorType.VALIDATION, f"{tag!r} is not a valid tag: {TAG_HINT}")
    return tag


def image_tag(reference: str) -> str:
    """The tag a snapshot built from ``reference`` is published under by default: the image's
    own tag (``python:3.12-slim`` → ``3.12-slim``), else ``latest``."""
    if "@" in reference:
        return "latest"
    last = reference.rsplit("/", 1)[-1]
    _, colon, tag = last.partition(":")
    return tag if colon and TAG.match(tag) else "latest"


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``("id", id, None)``, ``("tag", name, tag)`` or ``("name", name, None)``."""
    if UUID_RE.match(ref):
        return "id", ref, None
    name, colon, tag = ref.partition(":")
    check_name(name)
    if colon:
        return "tag", name, check_tag(tag)
    return "name", name, None


def image_run_config(image: Image) -> RunConfig | None:
    """The image's own ``USER`` and ``WORKDIR`` (its ``ENV`` is part of every sandbox already)."""
    user = image.config.user or None
    work_dir = image.config.working_dir or None
    if user is None and work_dir is None:
        return None
    try:
        return RunConfig(user=user, work_dir=work_dir if work_dir and work_dir[0] == "/" else None)
    except ValueError:  # an image with an odd USER: run as root, as before run_config existed
        return None


def dump_run_config(rc: RunConfig | None) -> str | None:
    return json.dumps(rc.to_json()) if rc is not None else None


def load_run_config(text: str | None) -> RunConfig | None:
    if not text:
        return None
    with contextlib.suppress(ValueError):
        return RunConfig.from_json(json.loads(text))
    return None


def load_layers(text: str | None) -> tuple[RunConfig | None, RunConfig | None]:
    """A sandbox's stored run configuration: (its snapshot's layer, its own layer)."""
    if not text:
        return None, None
    try:
        doc = json.loads(text)
        return (
            RunConfig.from_json(doc.get("snapshot"), "snapshot run_config"),
            RunConfig.from_json(doc.get("sandbox")),
        )
    except (ValueError, AttributeError):  # validated on the way in; never fail a command
        return None, None


def dump_layers(snapshot: RunConfig | None, sandbox: RunConfig | None) -> str | None:
    if snapshot is None and sandbox is None:
        return None
    return json.dumps(
        {
            "snapshot": snapshot.to_json() if snapshot else None,
            "sandbox": sandbox.to_json() if sandbox else None,
        }
    )


def effective_run_config(text: str | None) -> RunConfig | None:
    """What a sandbox's commands start from: its own layer over its snapshot's."""
    base, own = load_layers(text)
    if own is None:
        return base
    return own.over(base)


@dataclass(frozen=True)
class NewSnapshot:
    """What a build from an image needs."""

    name: str
    docker_image: str
    image: str
    fs_capacity_bytes: int
    tag: str
    run_config: RunConfig | None = None
    registry_id: str | None = None
    credentials: Credentials | None = None


class Snapshots:
    """Snapshot rows, their builds (tasks owned here) and their runtime layers."""

    def __init__(
        self,
        db: Database,
        runtime: Runtime,
        images: ImageStore,
        pulls: ImagePuller,
        credentials: TemplateCredentials,
        registries: TemplateCredentials,
    ) -> None:
        self.db = db
        self.runtime = runtime
        self.images = images
        self.pulls = pulls
        #: Pull credentials of snapshots built with inline ones (0.7.33 sends them), by id hex.
        self.credentials = credentials
        #: Passwords of the workspaces' registries (``/registries``), by registry id.
        self.registries = registries
        self._builds: dict[str, asyncio.Task[None]] = {}
        self._done: dict[str, asyncio.Event] = {}
        #: Pull progress of snapshots still building (their status message meanwhile).
        self._messages: dict[str, str] = {}

    async def aclose(self) -> None:
        tasks = list(self._builds.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    # -- lookups -------------------------------------------------------------------------------

    async def get(
        self, workspace_id: str, ref: str, session: AsyncSession | None = None
    ) -> Snapshot:
        """The snapshot ``ref`` names in the workspace (read through ``session`` if given).

        Raises:
            SnapshotError: ``NotFound`` (saying what was looked for), ``ValidationError`` for a
                reference that is neither an id nor a valid ``name[:tag]``.
        """
        kind, a, b = parse_ref(ref)
        async with contextlib.nullcontext(session) if session else self.db.session() as s:
            if kind == "id":
                row = (
                    await s.execute(
                        select(Snapshot).where(
                            Snapshot.workspace_id == workspace_id, Snapshot.id == a
                        )
                    )
                ).scalar()
            else:
                row = await self._by_tag(s, workspace_id, a or "", b or "latest")
                if row is None and kind == "name":
                    row = (
                        await s.execute(
                            select(Snapshot)
                            .where(
                                Snapshot.workspace_id == workspace_id,
                                Snapshot.name == a,
                                Snapshot.status == READY,
                            )
                            .order_by(Snapshot.created_at.desc())
                            .limit(1)
                        )
                    ).scalar()
        if row is None:
            raise SnapshotError(ErrorType.NOT_FOUND, f"Snapshot '{ref}' not found; {SNAPSHOT_HINT}")
        return row

    @staticmethod
    async def _by_tag(s: AsyncSession, workspace_id: str, name: str, tag: str) -> Snapshot | None:
        sid = (
            await s.execute(
                select(SnapshotTag.snapshot_id).where(
                    SnapshotTag.workspace_id == workspace_id,
                    SnapshotTag.name == name,
                    SnapshotTag.tag == tag,
                )
            )
        ).scalar()
        return None if sid is None else await s.get(Snapshot, sid)

    async def page(
        self, workspace_id: str, *, name_contains: str | None, limit: int, offset: int
    ) -> list[Snapshot]:
        query = select(Snapshot).where(Snapshot.workspace_id == workspace_id)
        if name_contains:
            query = query.where(contains_ci(Snapshot.name, name_contains))
        query = query.order_by(Snapshot.created_at.desc(), Snapshot.id).limit(limit).offset(offset)
        async with self.db.session() as s:
            return list((await s.execute(query)).scalars())

    async def tags_of(self, snapshot_ids: Sequence[str]) -> dict[str, list[str]]:
        if not snapshot_ids:
            return {}
        async with self.db.session() as s:
            rows = await s.execute(
                select(SnapshotTag.snapshot_id, SnapshotTag.tag)
                .where(SnapshotTag.snapshot_id.in_(list(snapshot_ids)))
                .order_by(SnapshotTag.tag)
            )
            out: dict[str, list[str]] = {}
            for sid, tag in rows.all():
                out.setdefault(sid, []).append(tag)
            return out

    async def tags_by_name(self, workspace_id: str, name: str) -> list[tuple[str, str]]:
        """``(tag, snapshot id)`` of every tag under ``name``.

        Raises:
            SnapshotError: ``NotFound`` when nobody has published under the name.
        """
        check_name(name)
        async with self.db.session() as s:
            tags = (
                await s.execute(
                    select(SnapshotTag.tag, SnapshotTag.snapshot_id)
                    .where(SnapshotTag.workspace_id == workspace_id, SnapshotTag.name == name)
                    .order_by(SnapshotTag.tag)
                )
            ).all()
            if not tags:
                exists = (
                    await s.execute(
                        select(Snapshot.id)
                        .where(Snapshot.workspace_id == workspace_id, Snapshot.name == name)
                        .limit(1)
                    )
                ).scalar()
                if exists is None:
                    raise SnapshotError(
                        ErrorType.NOT_FOUND,
                        f"Snapshot name '{name}' not found; {SNAPSHOT_HINT}",
                    )
        return [(t, sid) for t, sid in tags]

    # -- building from an image ----------------------------------------------------------------

    async def create(self, workspace_id: str, created_by: str, new: NewSnapshot) -> Snapshot:
        """Record a ``building`` snapshot and start resolving its image (a task owned here)."""
        row = Snapshot(
            id=str(uuid.uuid4()),
            workspace_id=workspace_id,
            name=new.name,
            status=BUILDING,
            status_message=f"Resolving image {new.docker_image}",
            docker_image=new.docker_image,
            image=new.image,
            fs_capacity_bytes=new.fs_capacity_bytes,
            created_by=created_by,
            registry_id=new.registry_id,
            run_config=dump_run_config(new.run_config),
        )
        async with self.db.session() as s, s.begin():
            s.add(row)
        if new.credentials is not None:
            self.credentials.put(uuid.UUID(row.id).hex, new.credentials)
        done = self._done[row.id] = asyncio.Event()
        task = asyncio.create_task(self._build(row, new), name=f"snapshot-{row.id}")
        self._builds[row.id] = task

        def _forget(_: asyncio.Task[None]) -> None:
            self._builds.pop(row.id, None)
            self._done.pop(row.id, None)
            self._messages.pop(row.id, None)
            done.set()

        task.add_done_callback(_forget)
        return row

    async def wait(self, snapshot_id: str, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a build to end (at once if none runs)."""
        done = self._done.get(snapshot_id)
        if done is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)

    async def _build(self, row: Snapshot, new: NewSnapshot) -> None:
        try:
            image = await self.pulls.resolve(
                new.image,
                credentials=new.credentials,
                progress=functools.partial(self._messages.__setitem__, row.id),
            )
        except ImageError as exc:
            await self._finish(row.id, status=FAILED, status_message=str(exc))
            return
        except Exception as exc:  # a build never takes the server down; it fails, saying why
            log.exception("snapshot %s failed to build", row.id)
            await self._finish(row.id, status=FAILED, status_message=f"Build failed: {exc}")
            return
        layered = (
            new.run_config.over(image_run_config(image))
            if new.run_config
            else (image_run_config(image))
        )
        await self._finish(
            row.id,
            status=READY,
            status_message=None,
            image_digest=image.digest,
            fs_used_bytes=image.size,
            run_config=dump_run_config(layered),
        )
        await self.publish(row.workspace_id, new.name, new.tag, row.id)

    def progress(self, snapshot_id: str) -> str | None:
        """The latest pull progress of a snapshot still building."""
        return self._messages.get(snapshot_id) if snapshot_id in self._builds else None

    async def _finish(self, snapshot_id: str, **values: object) -> None:
        self._messages.pop(snapshot_id, None)
        async with self.db.session() as s, s.begin():
            await s.execute(
                update(Snapshot)
                .where(Snapshot.id == snapshot_id)
                .values(updated_at=utcnow(), **values)
            )

    async def publish(self, workspace_id: str, name: str, tag: str, snapshot_id: str) -> None:
        """Point ``name:tag`` at the snapshot (moving it if it pointed elsewhere)."""
        for _ in range(3):  # a concurrent publish of the same new tag: the second one updates
            try:
                async with self.db.session() as s, s.begin():
                    moved = await s.execute(
                        update(SnapshotTag)
                        .where(
                            SnapshotTag.workspace_id == workspace_id,
                            SnapshotTag.name == name,
                            SnapshotTag.tag == tag,
                        )
                        .values(snapshot_id=snapshot_id, updated_at=utcnow())
                    )
                    if moved.rowcount == 0:  # type: ignore[attr-defined]
                        s.add(
                            SnapshotTag(
                                workspace_id=workspace_id,
                                name=name,
                                tag=tag,
                                snapshot_id=snapshot_id,
                            )
                        )
                return
            except IntegrityError:
                continue

    # -- capture -------------------------------------------------------------------------------

    async def capture(
        self,
        sandbox: Sandbox,
        *,
        created_by: str,
        name: str,
        tag: str,
        fs_capacity_bytes: int,
        run_config: RunConfig | None,
        network: str,
    ) -> Snapshot:
        """Keep the sandbox's files as a new ready snapshot and publish ``name:tag``.

        The caller holds the sandbox's lifecycle lock (no start, stop or delete meanwhile).
        """
        image = None
        with contextlib.suppress(ImageError):
            image = await asyncio.to_thread(self.images.get, sandbox.image)
        row = Snapshot(
            id=str(uuid.uuid4()),
            workspace_id=sandbox.workspace_id,
            name=name,
            status=BUILDING,
            docker_image=None,
            image=sandbox.image,
            image_digest=image.digest if image else None,
            fs_capacity_bytes=fs_capacity_bytes,
            source_sandbox_id=sandbox.id,
            has_layer=True,
            network=network,
            created_by=created_by,
            run_config=dump_run_config(run_config),
        )
        async with self.db.session() as s, s.begin():
            s.add(row)
        try:
            await self.runtime.capture(sandbox.id, row.id)
        except (RuntimeError_, SandboxNotFound) as exc:
            await self._finish(row.id, status=FAILED, status_message=f"Capture failed: {exc}")
            raise SnapshotError(
                ErrorType.SANDBOX_CONFIG, f"Could not capture sandbox '{sandbox.name}': {exc}"
            ) from exc
        used = await self.runtime.snapshot_usage(row.id)
        await self._finish(
            row.id,
            status=READY,
            status_message=None,
            fs_used_bytes=used + (image.size if image else 0),
        )
        await self.publish(sandbox.workspace_id, name, tag, row.id)
        async with self.db.session() as s:
            fresh = await s.get(Snapshot, row.id)
        assert fresh is not None
        return fresh

    # -- delete --------------------------------------------------------------------------------

    async def delete(self, snapshot: Snapshot) -> None:
        """Remove a snapshot, its tags and its files; sandboxes booted from it keep theirs.

        Its files stay on the host while a non-persistent sandbox booted from it exists (each
        stop of that sandbox starts it again from them); the last one's deletion frees them.
        """
        task = self._builds.get(snapshot.id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self.db.session() as s, s.begin():
            await s.execute(delete(SnapshotTag).where(SnapshotTag.snapshot_id == snapshot.id))
            await s.execute(delete(Snapshot).where(Snapshot.id == snapshot.id))
        self.credentials.delete(uuid.UUID(snapshot.id).hex)
        if snapshot.has_layer:
            await self.release_layers({snapshot.id})

    async def release_layers(self, candidates: set[str] | None = None) -> None:
        """Delete the files of captured snapshots that nothing needs any more: no snapshot
        record and no non-persistent sandbox booted from them. ``candidates`` limits the
        check to those ids (None: every snapshot the runtime holds, as at start-up)."""
        held = await self.runtime.snapshot_ids()
        ids = held if candidates is None else held & candidates
        if not ids:
            return
        async with self.db.session() as s:
            kept = set((await s.execute(select(Snapshot.id).where(Snapshot.id.in_(ids)))).scalars())
            booted = await s.execute(
                select(Sandbox.snapshot_id).where(
                    Sandbox.snapshot_id.in_(ids), Sandbox.persistent.is_(False)
                )
            )
            kept.update(i for i in booted.scalars() if i)
        for snapshot_id in sorted(ids - kept):
            try:
                await self.runtime.delete_snapshot(snapshot_id)
            except RuntimeError_ as exc:  # nothing refers to them: the next start-up retries
                log.warning("could not delete the files of snapshot %s: %s", snapshot_id, exc)
