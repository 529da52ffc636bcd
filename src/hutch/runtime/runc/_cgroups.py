"""Per-command cgroups (v1 freezer) so a command's whole process tree can be killed.

A command started with ``runc exec --cgroup freezer:<cmd>`` and everything it forks, including
children that called ``setsid`` or double-forked, stays in that cgroup; the sandbox's processes
cannot leave it (``/sys/fs/cgroup`` is mounted read-only inside). Killing is freeze → SIGKILL every
member → thaw, so nothing can fork between the listing and the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
from pathlib import Path

FREEZER = Path("/sys/fs/cgroup/freezer")


def command_cgroup(parent: str, command_id: str) -> Path:
    return FREEZER / parent.lstrip("/") / command_id


def create(path: Path) -> None:
    path.mkdir(parents=False, exist_ok=True)


def pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


async def _set_state(path: Path, state: str, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    (path / "freezer.state").write_text(state)
    while (path / "freezer.state").read_text().strip() != state:
        if loop.time() > deadline:
            return  # a freezing cgroup still gets the SIGKILLs; thaw lets them land
        await asyncio.sleep(0.002)
        (path / "freezer.state").write_text(state)


async def kill_all(path: Path, timeout: float = 5.0) -> None:
    """SIGKILL every process in the cgroup and wait until it is empty."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if not path.exists():
        return
    try:
        await _set_state(path, "FROZEN", deadline)
        for pid in pids(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(FileNotFoundError):
            await _set_state(path, "THAWED", deadline)
    while pids(path) and loop.time() < deadline:
        for pid in pids(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.005)


def remove_if_empty(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return False
        raise
    return True


def remove_tree(path: Path) -> None:
    """Remove a cgroup directory and its children, deepest first (v1 needs empty leaves)."""
    if not path.is_dir():
        return
    for child in [p for p in path.iterdir() if p.is_dir()]:
        remove_tree(child)
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()
