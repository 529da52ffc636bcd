"""Per-command cgroups (v1 freezer) so a command's whole process tree can be killed, and the
kill of a whole sandbox.

A command started with ``runc exec --cgroup freezer:<cmd>`` and everything it forks, including
children that called ``setsid`` or double-forked, stays in that cgroup; the sandbox's processes
cannot leave it (``/sys/fs/cgroup`` is mounted read-only inside). Killing is freeze → SIGKILL every
member → thaw, so nothing can fork between the listing and the kill.

A kill is the host's work, not the tenant's: it runs with the sandbox's CPU quota lifted
(:func:`unthrottled`). A process needs CPU to notice a SIGKILL and to exit (and to freeze), and a
sandbox whose quota is eaten by a fork bomb and a CPU hog gives its dying processes almost none:
its kill took seconds, its delete failed on a still-populated cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
from collections.abc import Iterator
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
FREEZER = ROOT / "freezer"
#: How long removing an emptied cgroup is retried on EBUSY (the kernel releases it after the last
#: member is reaped, which can trail the kill).
REMOVE_TIMEOUT = 2.0


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
    """SIGKILL every process in the (command) cgroup and wait until it is empty."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if not path.exists():
        return
    # freezer/<sandbox>/<command>: the sandbox's cgroups are named like the command's parent.
    with unthrottled(sandbox_cgroups("/" + str(path.parent.relative_to(FREEZER)))):
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


# -- a whole sandbox ------------------------------------------------------------------------------


def sandbox_cgroups(parent: str) -> list[Path]:
    """The sandbox's cgroup (``parent``, e.g. ``/hutch/<id>``) in every mounted hierarchy that
    has it: one per v1 controller and the v2 one of a hybrid host, or the one of a v2 host."""
    rel = parent.lstrip("/")
    if (ROOT / "cgroup.controllers").exists():  # cgroup v2 only
        roots = [ROOT]
    else:
        roots = [p for p in ROOT.iterdir() if p.is_dir() and not p.is_symlink()]
    return [d for d in (r / rel for r in roots) if d.is_dir()]


def _walk(dirs: list[Path]) -> list[Path]:
    """``dirs`` and every cgroup below them, deepest first."""
    out: list[Path] = []
    for top in dirs:
        for path, subdirs, _files in os.walk(top, topdown=False):
            del subdirs
            out.append(Path(path))
    return out


#: Kills in progress per CPU cgroup, and the quota to put back when the last one ends.
_lifted: dict[Path, tuple[int, str]] = {}


def _cpu_limit_files(dirs: list[Path]) -> list[tuple[Path, str]]:
    """(file, "no limit" value) of the sandbox's CPU quota: v1 ``cpu.cfs_quota_us``, v2
    ``cpu.max``."""
    out = []
    for d in dirs:
        if (d / "cpu.cfs_quota_us").exists():
            out.append((d / "cpu.cfs_quota_us", "-1"))
        elif (d / "cpu.max").exists():
            out.append((d / "cpu.max", "max"))
    return out


@contextlib.contextmanager
def unthrottled(dirs: list[Path]) -> Iterator[None]:
    """Lift the sandbox's CPU quota for the duration (nested and concurrent kills share one lift;
    the last to end puts the quota back)."""
    files = _cpu_limit_files(dirs)
    for f, unlimited in files:
        count, saved = _lifted.get(f, (0, ""))
        if count == 0:
            try:
                saved = f.read_text().strip()
                f.write_text(unlimited)
            except OSError:
                continue  # the cgroup is going; nothing to lift or to put back
        _lifted[f] = (count + 1, saved)
    try:
        yield
    finally:
        for f, _unlimited in files:
            entry = _lifted.get(f)
            if entry is None:
                continue
            count, saved = entry
            if count > 1:
                _lifted[f] = (count - 1, saved)
                continue
            del _lifted[f]
            with contextlib.suppress(OSError):
                # v2 reads back "max 100000" or "50000 100000": both are valid to write.
                f.write_text(saved)


def lift_cpu_limit(dirs: list[Path]) -> None:
    """Remove the sandbox's CPU quota for good (it is being stopped or deleted)."""
    for f, unlimited in _cpu_limit_files(dirs):
        _lifted.pop(f, None)  # kills in progress must not put it back
        with contextlib.suppress(OSError):
            f.write_text(unlimited)


def thaw(dirs: list[Path]) -> None:
    """Thaw the sandbox and every command cgroup in it: a frozen process cannot die."""
    for d in _walk(dirs):
        for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                if (d / name).exists():
                    (d / name).write_text(value)


def members(dirs: list[Path]) -> set[int]:
    """Every process in the sandbox's cgroups, command cgroups included."""
    found: set[int] = set()
    for d in _walk(dirs):
        found.update(pids(d))
    return found


async def kill_sandbox(dirs: list[Path], timeout: float) -> bool:
    """SIGKILL every process of the sandbox until none is left; False if some outlived
    ``timeout``.

    The caller lifts the CPU quota and thaws first. Where cgroup v2's ``cgroup.kill`` exists (also
    on a hybrid host's unified hierarchy) the kernel kills the whole tree at once, forks
    included; otherwise each member is killed, round after round: a process with a SIGKILL pending
    cannot fork, so only children forked before the round survive it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for d in dirs:
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if (d / "cgroup.kill").exists():
                (d / "cgroup.kill").write_text("1")
    while True:
        left = members(dirs)
        if not left:
            return True
        if loop.time() > deadline:
            return False
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.005)


async def remove_sandbox(dirs: list[Path], timeout: float = REMOVE_TIMEOUT) -> list[Path]:
    """Remove the sandbox's cgroups (children first), retrying EBUSY for up to ``timeout``;
    the ones left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = []
        for d in _walk(dirs):
            if not remove_if_empty(d):
                left.append(d)
        if not left or loop.time() > deadline:
            return left
        await asyncio.sleep(0.01)


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
