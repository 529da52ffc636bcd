"""An in-process :class:`~hutch.runtime._interface.Runtime` for tests that need no root.

:class:`FakeRuntime` keeps each sandbox as a directory under a base directory of the caller's
(a temp dir) and runs no processes. Its files are served by the same code as the runc
backend's (:class:`~hutch.runtime.runc._files.FdFiles`: ``openat2`` resolution inside the
sandbox's root, the bounded search walk), so the path rules, symlink confinement and errors
are exactly the real ones; only the root is a plain directory instead of a container's view.
The runtime conformance suite (``tests/runtime/test_conformance.py``) runs against both.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path

from hutch.runtime._interface import (
    ExecSpec,
    Process,
    Runtime,
    RuntimeError_,
    SandboxNotFound,
    SandboxSpec,
    SpawnError,
)
from hutch.runtime.images._types import Image, ImageConfig
from hutch.runtime.runc._files import FdFiles

__all__ = ["FAKE_IMAGE", "HOME", "FakeRuntime"]

#: An image with no layers, for specs of :class:`FakeRuntime` sandboxes (it unpacks none).
FAKE_IMAGE = Image(
    name="local/fake",
    digest="sha256:" + "0" * 64,
    layers=(),
    config=ImageConfig(),
    size=0,
    created_at="1970-01-01T00:00:00Z",
)

#: Made in every fresh sandbox (the home commands and relative paths start in).
HOME = "home/user"


class FakeRuntime(FdFiles, Runtime):
    """Sandboxes as directories under ``base``: ``sandboxes/<id>/`` (the root, starting empty
    but for ``/home/user``, or as a captured snapshot's copy) and ``snapshots/<id>/``. The
    image's files are not unpacked. Commands and connections are refused (no processes)."""

    def __init__(self, base: Path) -> None:
        self._sandboxes = base / "sandboxes"
        self._snapshots = base / "snapshots"
        self._sandboxes.mkdir(parents=True, exist_ok=True)
        self._snapshots.mkdir(parents=True, exist_ok=True)
        self._running: dict[str, bool] = {}

    def host_root(self, sandbox_id: str) -> Path:
        """The directory that is the sandbox's ``/`` (for tests arranging files directly)."""
        return self._sandboxes / sandbox_id

    # -- what FdFiles needs ----------------------------------------------------------------

    def root_fd(self, sandbox_id: str) -> int:
        if not self._running.get(sandbox_id):
            raise SandboxNotFound(f"sandbox {sandbox_id} is not running")
        return os.open(self.host_root(sandbox_id), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def file_owner(self, sandbox_id: str) -> tuple[int, int]:
        return os.getuid(), os.getgid()

    # -- lifecycle ---------------------------------------------------------------------------

    def _known(self, sandbox_id: str) -> Path:
        root = self.host_root(sandbox_id)
        if sandbox_id not in self._running or not root.is_dir():
            raise SandboxNotFound(f"sandbox {sandbox_id} does not exist")
        return root

    async def _fill(self, root: Path, snapshot: str | None) -> None:
        source = self._snapshots / snapshot if snapshot is not None else None
        if source is not None and source.is_dir():
            await asyncio.to_thread(shutil.copytree, source, root, symlinks=True)
        else:
            (root / HOME).mkdir(parents=True)

    async def create(self, spec: SandboxSpec) -> None:
        root = self.host_root(spec.id)
        if root.exists():
            raise RuntimeError_(f"sandbox {spec.id} already exists")
        try:
            await self._fill(root, spec.snapshot)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, root, ignore_errors=True)
            raise
        self._running[spec.id] = True

    async def delete(self, sandbox_id: str) -> None:
        self._running.pop(sandbox_id, None)
        await asyncio.to_thread(shutil.rmtree, self.host_root(sandbox_id), ignore_errors=True)

    async def stop(self, sandbox_id: str) -> None:
        self._known(sandbox_id)
        self._running[sandbox_id] = False

    async def start(self, spec: SandboxSpec) -> None:
        self._known(spec.id)
        self._running[spec.id] = True

    async def discard_writes(
        self, sandbox_id: str, *, snapshot: str | None, storage_bytes: int | None
    ) -> None:
        root = self._known(sandbox_id)
        if self._running[sandbox_id]:
            raise RuntimeError_(f"sandbox {sandbox_id} is running; stop it first")
        await asyncio.to_thread(shutil.rmtree, root)
        await self._fill(root, snapshot)

    async def snapshot_ids(self) -> set[str]:
        return {p.name for p in self._snapshots.iterdir()}

    async def capture(self, sandbox_id: str, snapshot_id: str) -> None:
        root = self._known(sandbox_id)
        await asyncio.to_thread(shutil.copytree, root, self._snapshots / snapshot_id, symlinks=True)

    async def snapshot_usage(self, snapshot_id: str) -> int:
        def usage() -> int:
            top = self._snapshots / snapshot_id
            return sum(p.lstat().st_size for p in top.rglob("*") if p.is_file())

        return await asyncio.to_thread(usage)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self._snapshots / snapshot_id, ignore_errors=True)

    async def list_ids(self) -> set[str]:
        return set(self._running)

    async def is_running(self, sandbox_id: str) -> bool:
        return self._running.get(sandbox_id, False)

    # -- processes and network: none ------------------------------------------------------------

    async def exec(self, sandbox_id: str, spec: ExecSpec) -> Process:
        if not self._running.get(sandbox_id):
            raise SandboxNotFound(f"sandbox {sandbox_id} is not running")
        raise SpawnError("FakeRuntime runs no processes; use RuncRuntime for commands")

    async def connect(self, sandbox_id: str, port: int) -> socket.socket:
        if not self._running.get(sandbox_id):
            raise SandboxNotFound(f"sandbox {sandbox_id} is not running")
        raise ConnectionRefusedError(f"FakeRuntime has no network; nothing listens on {port}")
