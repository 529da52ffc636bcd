"""The runc runtime on its own (no server): create, exec, kill, delete and failed creates.

Every test gets its own data directory; a fixture deletes whatever sandboxes a test leaves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from hutch.runtime._interface import ExecSpec, RuntimeError_, SandboxNotFound, SandboxSpec
from hutch.runtime.images import Image, ImageStore
from hutch.runtime.images._store import _mounted_layer_names
from hutch.runtime.runc import RuncRuntime, _fs
from hutch.runtime.runc._runtime import RuncProcess
from tests.conftest import TIME_SCALE

pytestmark = [pytest.mark.root, pytest.mark.asyncio(loop_scope="session")]

CGROUP = Path("/sys/fs/cgroup")
#: Upper bound for anything that should be quick (scaled on slow machines).
QUICK = 10 * TIME_SCALE


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Image:
    """The busybox image, imported into a store of this module's own."""
    store = ImageStore(tmp_path_factory.mktemp("runtime-images") / "store")
    return store.import_path("local/busybox", busybox_tar)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def runtime(data: Path) -> AsyncIterator[RuncRuntime]:
    """A runtime on a fresh data dir; every sandbox left in it is deleted afterwards."""
    rt = RuncRuntime(data)
    try:
        yield rt
    finally:
        for sandbox_id in await rt.list_ids():
            await rt.delete(sandbox_id)
        await rt.aclose()


def make_spec(image: Image, **kw: Any) -> SandboxSpec:
    sandbox_id = uuid.uuid4().hex  # cgroups are host-wide: ids must not collide with others
    kw.setdefault("hostname", f"rt-{sandbox_id[:8]}")
    return SandboxSpec(id=sandbox_id, image=image, **kw)


async def run(
    rt: RuncRuntime, sandbox_id: str, argv: Sequence[str], stdin: bytes | None = None, **kw: Any
) -> tuple[bytes, bytes, int]:
    """Run a command to completion: (stdout, stderr, exit code)."""
    proc = await rt.exec(sandbox_id, ExecSpec(argv=argv, **kw))
    try:
        if proc.stdin is not None:
            if stdin:
                proc.stdin.write(stdin)
                await proc.stdin.drain()
            proc.stdin.close()
        assert proc.stderr is not None
        out, err, code = await asyncio.wait_for(
            asyncio.gather(proc.stdout.read(), proc.stderr.read(), proc.wait()), QUICK
        )
    finally:
        await proc.close()
    return out, err, code


def sh(command: str) -> list[str]:
    return ["/bin/sh", "-c", command]


def start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, ProcessLookupError):
        return None


def alive(procs: dict[int, str | None]) -> list[int]:
    return [pid for pid, start in procs.items() if start is not None and start_time(pid) == start]


async def until(predicate: Any, timeout: float = QUICK) -> bool:
    """Poll ``predicate`` on the event loop until true or ``timeout`` passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return bool(predicate())


def leftovers(data: Path, sandbox_id: str) -> list[str]:
    """What of a sandbox is still on the host: bundle, runc state, mounts, cgroups."""
    left = []
    if (data / "sandboxes" / sandbox_id).exists():
        left.append("bundle dir")
    if (data / "runc" / sandbox_id).exists():
        left.append("runc state")
    left += [
        line for line in Path("/proc/self/mountinfo").read_text().splitlines() if sandbox_id in line
    ]
    left += [str(p) for p in CGROUP.glob(f"*/hutch/{sandbox_id}")]
    return left


async def test_create_exec_output_and_exit_code(runtime: RuncRuntime, image: Image) -> None:
    """A created sandbox runs commands: stdout, stderr and exit code come back apart."""
    spec = make_spec(image)
    await runtime.create(spec)
    assert await runtime.is_running(spec.id)
    out, err, code = await run(runtime, spec.id, sh("echo out; echo err >&2; exit 3"))
    assert (out, err, code) == (b"out\n", b"err\n", 3)
    out, _, code = await run(runtime, spec.id, ["/bin/hostname"])
    assert (out, code) == (f"{spec.hostname}\n".encode(), 0)


async def test_exec_env_and_cwd(runtime: RuncRuntime, image: Image) -> None:
    """The sandbox env, then the command's env over it; cwd as given (default /)."""
    spec = make_spec(image, env={"SB_VAR": "from-spec", "KEEP": "kept"})
    await runtime.create(spec)
    out, _, code = await run(
        runtime,
        spec.id,
        sh('echo "$SB_VAR $KEEP $CMD_VAR $HOME $HOSTNAME"; pwd'),
        env={"CMD_VAR": "x", "SB_VAR": "override"},
        cwd="/tmp",
    )
    assert code == 0
    assert out.decode() == f"override kept x /home/user {spec.hostname}\n/tmp\n"
    out, _, _ = await run(runtime, spec.id, sh('pwd; echo "$SB_VAR"; test -d /home/user'))
    assert out == b"/\nfrom-spec\n"


async def test_exec_stdin(runtime: RuncRuntime, image: Image) -> None:
    """Bytes written to stdin reach the command; closing it is EOF."""
    spec = make_spec(image)
    await runtime.create(spec)
    data = bytes(range(256)) * 64
    out, _, code = await run(runtime, spec.id, ["/bin/cat"], stdin=data)
    assert (out, code) == (data, 0)


async def test_exec_failure_is_an_exit_code(runtime: RuncRuntime, image: Image) -> None:
    """A binary or cwd that does not exist fails the command (255, runc's message on stderr)."""
    spec = make_spec(image)
    await runtime.create(spec)
    _, err, code = await run(runtime, spec.id, ["/no/such/binary"])
    assert code == 255 and b"/no/such/binary" in err
    _, err, code = await run(runtime, spec.id, sh("pwd"), cwd="/no/such/dir")
    assert code == 255 and b"/no/such/dir" in err
    assert await runtime.is_running(spec.id)


async def _members(proc: RuncProcess, at_least: int) -> dict[int, str | None]:
    """The command's processes once there are ``at_least`` of them, with their start times."""
    assert await until(lambda: len(proc.members()) >= at_least), proc.members()
    return {pid: start_time(pid) for pid in proc.members()}


async def test_kill_takes_the_whole_tree(runtime: RuncRuntime, image: Image) -> None:
    """kill() ends the command and everything it started, setsid and daemons included (137)."""
    spec = make_spec(image)
    await runtime.create(spec)
    proc = await runtime.exec(
        spec.id,
        ExecSpec(
            argv=sh(
                "sleep 100 & setsid sleep 200 & (sleep 250 &);"
                " start-stop-daemon -S -b -x /bin/sleep -- 260; sleep 300"
            )
        ),
    )
    try:
        procs = await _members(proc, 5)
        await proc.kill()
        assert await asyncio.wait_for(proc.wait(), QUICK) == 137
        assert alive(procs) == []
        assert proc.members() == []
    finally:
        await proc.close()
    assert await runtime.is_running(spec.id)


async def test_background_child_does_not_hold_the_command(
    runtime: RuncRuntime, image: Image
) -> None:
    """A command is done when its own process exits, however long its background children live."""
    spec = make_spec(image)
    await runtime.create(spec)
    proc = await runtime.exec(spec.id, ExecSpec(argv=sh("sleep 300 & echo hi")))
    try:
        assert await asyncio.wait_for(proc.wait(), QUICK) == 0
        assert await asyncio.wait_for(proc.stdout.readline(), QUICK) == b"hi\n"
        procs = await _members(proc, 1)
    finally:
        await proc.close()
    assert len(alive(procs)) == 1  # the sleep lives on ...
    await runtime.delete(spec.id)
    assert alive(procs) == []  # ... until its sandbox is deleted


async def test_delete_is_idempotent(runtime: RuncRuntime, image: Image, data: Path) -> None:
    """Deleting twice, or deleting what never existed, is fine; nothing is left afterwards."""
    spec = make_spec(image)
    await runtime.create(spec)
    assert leftovers(data, spec.id) != []
    await runtime.delete(spec.id)
    assert leftovers(data, spec.id) == []
    await runtime.delete(spec.id)
    await runtime.delete(uuid.uuid4().hex)
    assert leftovers(data, spec.id) == []
    assert spec.id not in await runtime.list_ids()
    assert not await runtime.is_running(spec.id)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"memory_bytes": 4096}, id="runc-cannot-set-memory-limit"),
        pytest.param({"hostname": "x" * 300}, id="runc-cannot-set-hostname"),
        pytest.param({"layers": (Path("/nonexistent-hutch-layer"),)}, id="overlay-mount-fails"),
    ],
)
async def test_failed_create_leaves_nothing(
    runtime: RuncRuntime, image: Image, data: Path, change: dict[str, Any]
) -> None:
    """A create that fails (in runc or before it) raises and leaves no trace on the host."""
    layers = change.pop("layers", None)
    if layers is not None:
        image = dataclasses.replace(image, layers=layers)
    spec = make_spec(image, **change)
    with pytest.raises(RuntimeError_):
        await runtime.create(spec)
    assert leftovers(data, spec.id) == []
    assert spec.id not in await runtime.list_ids()
    assert not await runtime.is_running(spec.id)


async def test_list_ids(runtime: RuncRuntime, image: Image) -> None:
    """list_ids holds exactly the sandboxes of this runtime."""
    assert await runtime.list_ids() == set()
    a, b = make_spec(image), make_spec(image)
    await runtime.create(a)
    await runtime.create(b)
    assert await runtime.list_ids() == {a.id, b.id}
    await runtime.delete(a.id)
    assert await runtime.list_ids() == {b.id}


async def test_root_fd_is_the_sandbox_view(runtime: RuncRuntime, image: Image) -> None:
    """root_fd resolves paths as the sandbox sees them (its /etc/hostname, its /proc)."""
    spec = make_spec(image)
    await runtime.create(spec)
    root = runtime.root_fd(spec.id)
    try:
        fd, _ = _fs.open_for_read(root, "/etc/hostname")
        with os.fdopen(fd, "rb") as f:
            assert f.read() == f"{spec.hostname}\n".encode()

        def init_cmd() -> bytes:
            fd, _ = _fs.open_for_read(root, "/proc/1/cmdline")
            with os.fdopen(fd, "rb") as f:
                return f.read().split(b"\0")[0]

        # runc run -d returns once the init is released; its execve may still be under way.
        assert await until(lambda: init_cmd() == b"/dev/.hutch-init"), init_cmd()
    finally:
        os.close(root)


async def test_missing_sandbox(runtime: RuncRuntime) -> None:
    """exec and root_fd on a sandbox that does not exist raise SandboxNotFound."""
    with pytest.raises(SandboxNotFound):
        await runtime.exec(uuid.uuid4().hex, ExecSpec(argv=["/bin/true"]))
    with pytest.raises(SandboxNotFound):
        runtime.root_fd(uuid.uuid4().hex)


async def test_close_leaves_nothing_on_the_host(data: Path, image: Image) -> None:
    """Once its last sandbox is gone, closing the runtime unmounts the storage pool and removes
    its directory under /run/hutch."""
    rt = RuncRuntime(data)
    spec = make_spec(image)
    await rt.create(spec)
    public = rt._shared(spec.id).parent
    await rt.delete(spec.id)
    await rt.aclose()
    assert not public.exists()
    assert str(data) not in Path("/proc/self/mountinfo").read_text()


def _host_mounts() -> int:
    return len(Path("/proc/self/mountinfo").read_text().splitlines())


async def test_sandboxes_leave_the_host_mount_table_alone(
    runtime: RuncRuntime, image: Image, data: Path
) -> None:
    """A running sandbox's root overlay lives only in its own mount namespace: the host's mount
    table (which every new container copies, so its size is paid on each create) does not grow
    with sandboxes, across stop and start too, and the image store still sees their layers as
    in use."""
    first = make_spec(image)
    await runtime.create(first)  # the storage pool's own mount comes with the first
    before = _host_mounts()
    specs = [make_spec(image) for _ in range(3)]
    for spec in specs:
        await runtime.create(spec)
    assert _host_mounts() == before
    await runtime.stop(specs[0].id)
    await runtime.start(specs[0])
    assert _host_mounts() == before
    assert (await run(runtime, specs[0].id, ["/bin/echo", "up"]))[::2] == (b"up\n", 0)
    in_use = _mounted_layer_names(image.layers[0].parent, data / "sandboxes")
    assert {p.name for p in image.layers} <= in_use
    for spec in [first, *specs]:
        await runtime.delete(spec.id)
    assert not {p.name for p in image.layers} & _mounted_layer_names(
        image.layers[0].parent, data / "sandboxes"
    )
