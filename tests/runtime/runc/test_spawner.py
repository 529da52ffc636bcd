"""hutch-init's command spawner: the protocol against the real binary, and inside sandboxes.

The first half runs the compiled ``hutch-init`` as an ordinary process (no container) with one end
of a socket pair as its stdin, and talks to it with :class:`Spawner` or raw packets. The second
half checks what sandboxed code can do to its init, and the ``runc exec`` path used for sandboxes
whose init this server did not start (after a restart).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hutch.runtime._interface import ExecSpec, SandboxSpec, SpawnError
from hutch.runtime.images import Image, ImageStore
from hutch.runtime.runc import RuncRuntime, _spawner
from tests.conftest import TIME_SCALE

pytestmark = [pytest.mark.asyncio(loop_scope="session")]

QUICK = 10 * TIME_SCALE


@pytest.fixture(scope="module")
def init_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = _spawner.build_init(tmp_path_factory.mktemp("init-bin"))
    assert built is not None, "hutch-init must build (gcc and libc6-dev are installed by make)"
    return built


@pytest.fixture
def init(init_binary: Path) -> Iterator[tuple[subprocess.Popen[bytes], socket.socket]]:
    """A running hutch-init (not in a container) and the server's end of its control socket."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen([str(init_binary)], stdin=theirs)
    theirs.close()
    try:
        yield proc, ours
    finally:
        proc.kill()
        proc.wait()
        ours.close()


@pytest.fixture
async def spawner(
    init: tuple[subprocess.Popen[bytes], socket.socket],
) -> AsyncIterator[_spawner.Spawner]:
    spawner = _spawner.Spawner(init[1])
    try:
        yield spawner
    finally:
        spawner.close()


async def start(
    spawner: _spawner.Spawner, argv: list[str], fd: int, *, run: bool = True
) -> asyncio.Future[int]:
    """Spawn with ``fd`` as stdin, stdout and stderr (closed here), release; the exit status."""
    try:
        spawned = await spawner.spawn(argv, {"PATH": "/usr/bin:/bin"}, "/", (fd, fd, fd))
    finally:
        os.close(fd)
    exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    spawner.release(spawned.id, exited.set_result, run=run)
    return exited


def devnull() -> int:
    return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


async def run(spawner: _spawner.Spawner, argv: list[str], cwd: str = "/") -> tuple[bytes, int]:
    """Spawn, release and collect stdout and the exit code."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    try:
        spawned = await spawner.spawn(argv, {"PATH": "/usr/bin:/bin"}, cwd, (in_r, out_w, out_w))
    finally:
        os.close(out_w)
        os.close(in_r)
        os.close(in_w)
    exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    spawner.release(spawned.id, exited.set_result)
    out = await asyncio.to_thread(_read_all, out_r)
    return out, _spawner.exit_code(await asyncio.wait_for(exited, QUICK))


def _read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as f:
        return f.read()


async def test_spawn_runs_the_command_with_its_stdio_and_exit_code(
    spawner: _spawner.Spawner,
) -> None:
    """A spawned command writes to the pipes it was given; its exit code comes back."""
    assert await run(spawner, ["sh", "-c", "echo hi; exit 3"]) == (b"hi\n", 3)
    assert await run(spawner, ["pwd"], cwd="/tmp") == (b"/tmp\n", 0)
    assert await run(spawner, ["sh", "-c", "kill -9 $$"]) == (b"", 137)


async def test_missing_program_or_cwd_says_so_and_exits_255(
    spawner: _spawner.Spawner,
) -> None:
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    exited = await start(spawner, ["/no/such/program"], err_w)
    assert b"/no/such/program" in await asyncio.to_thread(_read_all, err_r)
    assert _spawner.exit_code(await exited) == 255
    out, code = await run(spawner, ["pwd"], cwd="/no/such/dir")
    assert code == 255 and b"/no/such/dir" in out


async def test_pty_spawn_fails_cleanly_on_a_missing_cwd(
    spawner: _spawner.Spawner,
) -> None:
    with pytest.raises(_spawner.SpawnerError, match="No such file"):
        await spawner.spawn(["sh"], {}, "/no/such/dir", None)


async def test_abort_never_runs_the_command(
    spawner: _spawner.Spawner,
    tmp_path: Path,
) -> None:
    """A child released with run=False exits 255 and never execs."""
    marker = tmp_path / "ran"
    exited = await start(spawner, ["touch", str(marker)], devnull(), run=False)
    assert _spawner.exit_code(await asyncio.wait_for(exited, QUICK)) == 255
    assert not marker.exists()


def _packets() -> list[tuple[bytes, int]]:
    """Malformed control messages: (bytes, number of /dev/null fds to attach).

    (An empty packet is not among them: on a SOCK_SEQPACKET socket it reads as the server's end
    of the connection.)
    """
    spawn = struct.Struct("=IIQIIHHI")
    return [
        (b"x", 0),
        (b"\xff" * 64, 0),
        (spawn.pack(1, 0, 1, 1, 0, 0, 0, 0), 0),  # SPAWN without descriptors
        (spawn.pack(1, 0, 2, 1, 0, 0, 0, 0), 2),  # wrong number of descriptors
        (spawn.pack(1, 0, 3, 1, 0, 0, 0, 0), 8),  # too many
        (spawn.pack(1, 1, 4, 0xFFFFFFFF, 0xFFFFFFFF, 0, 0, 0), 1),  # absurd counts
        (struct.pack("=IiQ", 2, 0, 999), 0),  # GO for nothing
        (struct.pack("=IiQ", 3, 0, 998), 0),  # ABORT for nothing
        (struct.pack("=IiQ", 77, 0, 1), 3),  # unknown type, with descriptors
    ]


async def test_malformed_messages_are_refused_and_the_init_keeps_serving(
    init: tuple[subprocess.Popen[bytes], socket.socket],
) -> None:
    proc, sock = init
    null = devnull()
    try:
        for data, nfds in _packets():
            socket.send_fds(sock, [data], [null] * nfds)
        # A SPAWN whose payload does not match its counts gets EINVAL back.
        payload = os.memfd_create("bad", os.MFD_CLOEXEC)
        os.write(payload, b"/\0only-one-string\0")
        socket.send_fds(
            sock, [struct.pack("=IIQIIHHI", 1, 0, 5, 3, 0, 0, 0, 0)], [payload, null, null, null]
        )
        os.close(payload)
    finally:
        os.close(null)
    answers = []
    sock.settimeout(QUICK)
    while len(answers) < 5:
        data, fds, _, _ = socket.recv_fds(sock, 64, 4)
        for fd in fds:
            os.close(fd)
        answers.append(struct.unpack("=IiQ", data))
    assert {(kind, ident) for kind, _, ident in answers} == {(4, i) for i in (1, 2, 3, 4, 5)}
    assert all(err != 0 for _, err, _ in answers)
    assert proc.poll() is None
    spawner = _spawner.Spawner(sock)
    try:
        assert await run(spawner, ["echo", "still here"]) == (b"still here\n", 0)
    finally:
        spawner.close()


async def test_nul_in_a_command_is_refused_before_sending(
    spawner: _spawner.Spawner,
) -> None:
    with pytest.raises(_spawner.SpawnerError, match="NUL"):
        await spawner.spawn(["echo", "a\0b"], {}, "/", None)


async def test_children_waiting_for_go_exit_when_the_server_goes(
    init: tuple[subprocess.Popen[bytes], socket.socket], tmp_path: Path
) -> None:
    """Closing the control socket makes waiting children exit unrun; the init goes on reaping."""
    proc, sock = init
    marker = tmp_path / "ran"
    spawner = _spawner.Spawner(sock)
    null = devnull()
    try:
        spawned = await spawner.spawn(["touch", str(marker)], {}, "/", (null, null, null))
    finally:
        os.close(null)
    spawner.close()
    for _ in range(int(200 * TIME_SCALE)):
        if not Path(f"/proc/{spawned.pid}").exists():
            break
        await asyncio.sleep(0.01)
    assert not Path(f"/proc/{spawned.pid}").exists(), "the child exited and the init reaped it"
    assert not marker.exists()
    assert proc.poll() is None


# -- inside sandboxes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Image:
    store = ImageStore(tmp_path_factory.mktemp("spawner-images") / "store")
    return store.import_path("local/busybox", busybox_tar)


@pytest.fixture
async def sandbox(tmp_path: Path, image: Image) -> AsyncIterator[tuple[RuncRuntime, str]]:
    rt = RuncRuntime(tmp_path / "data")
    sandbox_id = uuid.uuid4().hex
    await rt.create(SandboxSpec(id=sandbox_id, image=image, hostname="spawn-test"))
    try:
        yield rt, sandbox_id
    finally:
        await rt.delete(sandbox_id)
        await rt.aclose()


async def sh(rt: RuncRuntime, sandbox_id: str, script: str) -> tuple[bytes, bytes, int]:
    proc = await rt.exec(sandbox_id, ExecSpec(argv=["sh", "-c", script]))
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
        return out, err, await asyncio.wait_for(proc.wait(), QUICK)
    finally:
        await proc.close()


@pytest.mark.root
async def test_sandbox_code_cannot_kill_or_inspect_its_init(
    sandbox: tuple[RuncRuntime, str],
) -> None:
    """kill -9 1 does nothing; /proc/1's descriptors and environment are closed to the sandbox."""
    rt, sid = sandbox
    _, _, code = await sh(rt, sid, "kill -9 1; kill -STOP 1; sleep 0.1")
    assert code in (0, 1)
    out, _, code = await sh(rt, sid, "ls /proc/1/fd 2>&1; cat /proc/1/environ 2>&1; echo done")
    assert b"socket" not in out and b"PATH=" not in out and out.endswith(b"done\n")
    assert (await sh(rt, sid, "echo alive"))[0] == b"alive\n"


@pytest.mark.root
async def test_many_commands_at_once(sandbox: tuple[RuncRuntime, str]) -> None:
    rt, sid = sandbox
    results = await asyncio.gather(*(sh(rt, sid, f"echo {i}; exit {i % 7}") for i in range(40)))
    assert [(out, code) for out, _, code in results] == [
        (f"{i}\n".encode(), i % 7) for i in range(40)
    ]


@pytest.mark.root
async def test_commands_of_an_adopted_sandbox_go_through_runc_exec(
    sandbox: tuple[RuncRuntime, str], tmp_path: Path
) -> None:
    """A second runtime on the same data dir (a restarted server) finding no parked control
    socket (a sandbox started before parking: no ``init.ctl``) runs its commands with runc exec,
    with the same output, exit codes and kill."""
    rt, sid = sandbox
    (tmp_path / "data" / "sandboxes" / sid / "init.ctl").unlink()
    adopted = RuncRuntime(tmp_path / "data")
    assert (await sh(adopted, sid, "echo via runc; exit 4"))[::2] == (b"via runc\n", 4)
    proc = await adopted.exec(sid, ExecSpec(argv=["sh", "-c", "setsid sleep 300 & sleep 300"]))
    try:
        await proc.kill()
        assert await asyncio.wait_for(proc.wait(), QUICK) == 137
    finally:
        await proc.close()
    # The first runtime's fast path still works beside it.
    assert (await sh(rt, sid, "echo fast"))[0] == b"fast\n"


@pytest.mark.root
async def test_cwd_missing_for_a_pty_is_a_spawn_error(sandbox: tuple[RuncRuntime, str]) -> None:
    rt, sid = sandbox
    with pytest.raises(SpawnError, match="/nonexistent"):
        await rt.exec(sid, ExecSpec(argv=["/bin/sh"], pty=True, cwd="/nonexistent"))


@pytest.mark.root
async def test_a_restarted_runtime_takes_back_the_control_socket(
    sandbox: tuple[RuncRuntime, str], tmp_path: Path
) -> None:
    """When the runtime that started a sandbox goes (its end of the socket closed), the next one
    takes the socket back from the init: commands start through the init again (their parent is
    pid 1), and the earlier runtime's command ending meanwhile confuses nothing."""
    rt, sid = sandbox
    earlier = await rt.exec(sid, ExecSpec(argv=["sleep", "0.3"]))
    rt._spawners.pop(sid).close()  # what a server's exit does to its end
    adopted = RuncRuntime(tmp_path / "data")
    try:
        for i in range(10):
            assert (await sh(adopted, sid, f"echo $PPID {i}"))[::2] == (f"1 {i}\n".encode(), 0)
        await asyncio.sleep(0.4)  # the earlier command has ended: its exit came to `adopted`
        assert (await sh(adopted, sid, "echo $PPID"))[::2] == (b"1\n", 0)
    finally:
        await earlier.close()
        spawner = adopted._spawners.pop(sid, None)
        if spawner is not None:
            spawner.close()


@pytest.mark.root
async def test_parked_socket_is_taken_back_and_hello_releases_old_waiters(
    init: tuple[subprocess.Popen[bytes], socket.socket], tmp_path: Path
) -> None:
    """PARK: the init holds our end; closing ours leaves the socket open, pidfd_getfd takes it
    back; HELLO names the last id used and makes children still waiting for GO exit unrun."""
    proc, sock = init
    marker = tmp_path / "ran"
    spawner = _spawner.Spawner(sock)
    fd = await spawner.park()
    assert fd >= 3
    null = devnull()
    try:
        waiting = await spawner.spawn(["touch", str(marker)], {}, "/", (null, null, null))
    finally:
        os.close(null)
    spawner.close()  # our end goes; the init's copy keeps the socket open
    assert Path(f"/proc/{waiting.pid}").exists(), "no EOF: the child still waits for GO"
    again = await _spawner.Spawner.attach(_spawner.take_socket(proc.pid, fd))
    try:
        for _ in range(int(200 * TIME_SCALE)):
            if not Path(f"/proc/{waiting.pid}").exists():
                break
            await asyncio.sleep(0.01)
        assert not Path(f"/proc/{waiting.pid}").exists() and not marker.exists()
        assert await run(again, ["sh", "-c", "echo again"]) == (b"again\n", 0)
    finally:
        again.close()


@pytest.mark.root
async def test_init_keeps_reaping_when_nobody_reads_and_loses_no_message(
    init: tuple[subprocess.Popen[bytes], socket.socket],
) -> None:
    """With no reader, exits the socket cannot take wait in the init, which goes on reaping;
    a reader later gets every one of them, in order."""
    proc, sock = init
    n = 1500  # far past what the socket's queue holds
    null = devnull()
    try:
        for ident in range(1, n + 1):
            header = _spawner._spawn_header(ident, 1, 0, False, 24, 80, None)
            payload = _spawner._payload(["true"], {}, "/")
            try:
                socket.send_fds(sock, [header], [payload, null, null, null])
            finally:
                os.close(payload)
    finally:
        os.close(null)
    # Answer nothing but GO: SPAWNED messages pile up too, then EXITED.
    for ident in range(1, n + 1):
        sock.send(struct.pack("=IiQ", _spawner.GO, 0, ident))
    deadline = 200 * TIME_SCALE
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    for _ in range(int(deadline)):
        if not children.read_text().strip():
            break
        await asyncio.sleep(0.05)
    assert not children.read_text().strip(), "every child was reaped while nobody read"
    seen: list[tuple[int, int, int]] = []
    sock.settimeout(5)
    while sum(kind == _spawner.EXITED for kind, _, _ in seen) < n:
        data, fds, _, _ = socket.recv_fds(sock, 64, 2)
        for fd in fds:
            os.close(fd)
        seen.append(struct.unpack("=IiQ", data))
    spawned = {i: at for at, (kind, _, i) in enumerate(seen) if kind == _spawner.SPAWNED}
    exited = {i: (at, v) for at, (kind, v, i) in enumerate(seen) if kind == _spawner.EXITED}
    assert sorted(exited) == sorted(spawned) == list(range(1, n + 1))
    # In order: each command's SPAWNED came before its EXITED, and each ran to exit 0.
    assert all(spawned[i] < at and _spawner.exit_code(v) == 0 for i, (at, v) in exited.items())
