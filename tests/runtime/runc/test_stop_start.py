"""The runc runtime's stop and start: a stopped sandbox holds no process, no container and no
cgroup, but keeps its files; start brings it back with them."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from hutch.runtime._interface import ExecSpec, SandboxNotFound
from hutch.runtime.images import Image
from hutch.runtime.runc import RuncRuntime
from tests.runtime.runc import test_runtime as base
from tests.runtime.runc.test_runtime import CGROUP, make_spec, run, sh, start_time

pytestmark = [pytest.mark.root, pytest.mark.asyncio(loop_scope="session")]
# The fixtures of the runtime's main tests: a module's image, a fresh runtime and data dir.
image, runtime, data = base.image, base.runtime, base.data


def held(data_dir: Path, sandbox_id: str) -> list[str]:
    """What of a sandbox's *running* side is on the host: runc state, root mount, cgroups."""
    left = []
    if (data_dir / "runc" / sandbox_id).exists():
        left.append("runc state")
    left += [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if f"{sandbox_id}/rootfs" in line
    ]
    left += [str(p) for p in CGROUP.glob(f"*/hutch/{sandbox_id}")]
    return left


async def test_stop_frees_everything_but_the_files(
    runtime: RuncRuntime,
    image: Image,
    data: Path,
) -> None:
    """After stop(): no process of the sandbox lives (background ones included), runc knows no
    container, no cgroup or root mount is left; start() brings back the files written before."""
    spec = make_spec(image)
    await runtime.create(spec)
    out, _, code = await run(runtime, spec.id, sh("echo kept > /home/user/f; mkdir -p /opt/d"))
    assert code == 0, out
    proc = await runtime.exec(spec.id, ExecSpec(argv=sh("sleep 300 & echo $!; wait")))
    line = await proc.stdout.readline()
    init = runtime.init_pid(spec.id)
    pids = {p: start_time(p) for p in (init, proc.pid)}
    assert all(pids.values()) and line.strip().isdigit()

    await runtime.stop(spec.id)
    await proc.close()
    assert not await runtime.is_running(spec.id)
    assert [p for p, t in pids.items() if start_time(p) == t] == []
    assert held(data, spec.id) == []
    assert spec.id in await runtime.list_ids()  # the filesystem is still held
    assert (data / "sandboxes" / spec.id / "upper" / "home/user/f").read_text() == "kept\n"
    with pytest.raises(SandboxNotFound):
        runtime.root_fd(spec.id)
    await runtime.stop(spec.id)  # idempotent

    await runtime.start(spec)
    assert await runtime.is_running(spec.id)
    assert runtime.init_pid(spec.id) != init
    out, _, code = await run(runtime, spec.id, sh("cat /home/user/f; test -d /opt/d && echo dir"))
    assert (out, code) == (b"kept\ndir\n", 0)
    await runtime.start(spec)  # a no-op when running
    assert await runtime.is_running(spec.id)


async def test_start_after_a_fresh_runtime(
    runtime: RuncRuntime,
    image: Image,
    data: Path,
) -> None:
    """A runtime that did not stop the sandbox itself (a server restart) starts it again."""
    spec = make_spec(image)
    await runtime.create(spec)
    await run(runtime, spec.id, sh("echo 1 > /f"))
    await runtime.stop(spec.id)
    fresh = RuncRuntime(data)
    await fresh.start(spec)
    out, _, _ = await run(fresh, spec.id, ["/bin/cat", "/f"])
    assert out == b"1\n"
    await fresh.stop(spec.id)
    assert held(data, spec.id) == []


async def test_stop_or_start_unknown_sandbox(
    runtime: RuncRuntime,
    image: Image,
) -> None:
    """Neither stop() nor start() invents a sandbox the runtime does not hold."""
    with pytest.raises(SandboxNotFound):
        await runtime.stop(uuid.uuid4().hex)
    with pytest.raises(SandboxNotFound):
        await runtime.start(make_spec(image))
