"""Isolation and limits of real sandboxes: memory, fork bombs, cgroup limits, cleanup, kill tree.

Host-side facts are read straight from cgroupfs, /proc and runc's state, not from the server.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hutch import CommandTimeoutError, Sandbox, SandboxClient, SandboxClientError
from tests.conftest import (
    TIME_SCALE,
    Server,
    remove_all_sandboxes,
    start_server,
    stop_server,
    wait_until,
)

pytestmark = pytest.mark.root

CGROUP = Path("/sys/fs/cgroup")
MiB = 1024 * 1024
PROMPT = 5 * TIME_SCALE
INIT = "/dev/.hutch-init"


@pytest.fixture(scope="module")
def neighbour(client: SandboxClient, bb_template: str) -> Iterator[Sandbox]:
    """A sandbox that must keep working whatever happens in the others."""
    with client.sandbox(bb_template) as sb:
        yield sb


def _cg(controller: str, sb: Sandbox) -> Path:
    return CGROUP / controller / "hutch" / str(sb.id)


def _ok(sb: Sandbox) -> bool:
    try:
        result = sb.run("echo ok", timeout=int(5 * TIME_SCALE))
    except SandboxClientError:
        return False
    return (result.stdout, result.exit_code) == ("ok\n", 0)


def _healthy(server: Server, *sandboxes: Sandbox) -> None:
    assert server.alive()
    for sb in sandboxes:
        assert _ok(sb), f"sandbox {sb.name} no longer runs commands"


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/<pid>/stat), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _procs(cgroup: Path) -> dict[int, str]:
    """Processes of a cgroup and all its children, with their start times (to spot pid reuse)."""
    found: dict[int, str] = {}
    for procs in [cgroup / "cgroup.procs", *cgroup.glob("*/cgroup.procs")]:
        try:
            pids = [int(p) for p in procs.read_text().split()]
        except FileNotFoundError:
            continue
        for pid in pids:
            start = _start_time(pid)
            if start is not None:
                found[pid] = start
    return found


def _argv0(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except (FileNotFoundError, ProcessLookupError):
        return b""


def _alive(procs: dict[int, str]) -> list[int]:
    return [pid for pid, start in procs.items() if _start_time(pid) == start]


def _leftovers(sandbox_id: str, data_dir: Path) -> list[str]:
    """Everything of a sandbox still on the host: mounts, runc state, cgroups, bundle, storage,
    its directory under /run/hutch."""
    left = [line for line in Path("/proc/mounts").read_text().splitlines() if sandbox_id in line]
    left += [str(p) for p in CGROUP.glob(f"*/hutch/{sandbox_id}")]
    if (data_dir / "sandboxes" / sandbox_id).exists():
        left.append("bundle dir")
    if (data_dir / "runc" / sandbox_id).exists():
        left.append("runc state dir")
    if (data_dir / "storage" / sandbox_id).exists():
        left.append("storage subvolume")
    left += [str(p) for p in Path("/run/hutch").glob(f"*/{sandbox_id}")]
    return left


# -- memory ------------------------------------------------------------------------------------


@pytest.fixture
def mem_sandbox(client: SandboxClient) -> Iterator[Sandbox]:
    """A sandbox of a fresh template limited to 64Mi."""
    name = f"mem-{secrets.token_hex(4)}"
    client.create_template(name, "local/busybox", memory="64Mi")
    try:
        with client.sandbox(name) as sb:
            yield sb
    finally:
        client.delete_template(name)


def test_memory_hog_is_killed(server: Server, mem_sandbox: Sandbox, neighbour: Sandbox) -> None:
    """A command allocating far beyond 64Mi is OOM-killed (137); sandbox and host carry on."""
    memory = _cg("memory", mem_sandbox)
    assert int((memory / "memory.limit_in_bytes").read_text()) == 64 * MiB
    memsw = memory / "memory.memsw.limit_in_bytes"
    if memsw.exists():  # no swapping around the limit
        assert int(memsw.read_text()) == 64 * MiB

    start = time.monotonic()
    result = mem_sandbox.run("dd if=/dev/zero of=/dev/null bs=200M count=1")  # a 200 MiB buffer
    assert time.monotonic() - start < PROMPT
    assert result.exit_code == 137, result
    oom = dict(line.split() for line in (memory / "memory.oom_control").read_text().splitlines())
    if "oom_kill" in oom:
        assert int(oom["oom_kill"]) >= 1

    result = mem_sandbox.run("x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}")
    assert result.exit_code == 137, result  # a shell holding it in a variable: same fate

    _healthy(server, mem_sandbox, neighbour)


# -- disk --------------------------------------------------------------------------------------


def test_disk_fill_stops_at_the_storage_limit(
    server: Server, client: SandboxClient, neighbour: Sandbox
) -> None:
    """Writing past the template's ``storage`` fails with EDQUOT; the host disk is untouched, the
    space comes back when the file goes, and delete removes the sandbox's storage."""
    name = f"disk-{secrets.token_hex(4)}"
    client.create_template(name, "local/busybox", storage="64Mi")
    host_free = shutil.disk_usage(server.data_dir).free
    try:
        with client.sandbox(name) as sb:
            res = sb.run("dd if=/dev/zero of=/tmp/fill bs=1M count=200")
            assert res.exit_code != 0 and "quota exceeded" in res.stderr.lower(), res
            written = int(sb.run("sync; du -m /tmp/fill").stdout.split()[0])
            assert 32 <= written <= 64, written
            assert shutil.disk_usage(server.data_dir).free > host_free - 200 * MiB
            res = sb.run("rm /tmp/fill; sync; dd if=/dev/zero of=/tmp/again bs=1M count=32")
            assert res.exit_code == 0, res
            storage = server.data_dir / "storage" / str(sb.id)
            assert (storage / "upper" / "tmp" / "again").exists()
            _healthy(server, sb, neighbour)
        assert not storage.exists()
    finally:
        client.delete_template(name)


def test_default_storage_limit(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> None:
    """A sandbox whose template names no storage gets the server's --default-storage."""
    data = tmp_path_factory.mktemp("default-storage") / "data"
    srv = start_server(data, "--default-storage", "48Mi")
    try:
        srv.import_image("local/busybox", busybox_tar)
        with srv.client() as c:
            c.create_template("plain", "local/busybox")
            with c.sandbox("plain") as sb:
                res = sb.run("dd if=/dev/zero of=/tmp/fill bs=1M count=100")
                assert res.exit_code != 0 and "quota exceeded" in res.stderr.lower(), res
    finally:
        stop_server(srv)
        remove_all_sandboxes(data)


# -- fork bomb ---------------------------------------------------------------------------------


def test_fork_bomb_is_contained(
    server: Server, client: SandboxClient, bb_template: str, neighbour: Sandbox
) -> None:
    """A fork bomb stops at pids.max; host, neighbours and the sandbox itself stay usable."""
    with client.sandbox(bb_template) as sb:
        pids = _cg("pids", sb)
        assert (pids / "pids.max").read_text().strip() == "1024"
        start = time.monotonic()
        result = sb.run("bomb(){ bomb | bomb & }; bomb", timeout=5)
        assert time.monotonic() - start < 5 + PROMPT
        assert result.exit_code == 0  # the shell returns at once; the bomb rages in background
        _healthy(server, neighbour)  # while it rages
        assert wait_until(lambda: int((pids / "pids.events").read_text().split()[1]) > 0, 10), (
            "the bomb never reached pids.max"
        )
        assert int((pids / "pids.current").read_text()) <= 1024
        # How long the bomb lasts is chance (each process dies when its fork fails), but
        # commands still get through between its forks.
        assert wait_until(lambda: _ok(sb), 30), "the sandbox stayed unusable"
        sandbox_id = str(sb.id)
    assert _leftovers(sandbox_id, server.data_dir) == []
    _healthy(server, neighbour)


def test_delete_during_fork_bomb_cleans_everything(
    server: Server, client: SandboxClient, bb_template: str, neighbour: Sandbox
) -> None:
    """Deleting a sandbox while an endless fork bomb runs leaves no process, cgroup or mount."""
    sb = client.create_sandbox(bb_template)
    try:
        sb.run("bomb(){ bomb | bomb & }; (while :; do bomb; sleep 0.01; done) &")
        pids = _cg("pids", sb)
        assert wait_until(lambda: int((pids / "pids.current").read_text()) > 100, 10)
        procs = _procs(pids)
        _healthy(server, neighbour)
    finally:
        client.delete_sandbox(sb.name)
    assert sb.id is not None
    assert _leftovers(sb.id, server.data_dir) == []
    assert _alive(procs) == []
    _healthy(server, neighbour)


# -- limits ------------------------------------------------------------------------------------


def test_cpu_memory_pids_limits_applied(sandbox: Sandbox) -> None:
    """The template's 500m / 256Mi become cgroup limits on the host, with the pids limit."""
    assert int((_cg("cpu", sandbox) / "cpu.cfs_quota_us").read_text()) == 50_000
    assert int((_cg("cpu", sandbox) / "cpu.cfs_period_us").read_text()) == 100_000
    memory = _cg("memory", sandbox)
    assert int((memory / "memory.limit_in_bytes").read_text()) == 256 * MiB
    if (memory / "memory.memsw.limit_in_bytes").exists():
        assert int((memory / "memory.memsw.limit_in_bytes").read_text()) == 256 * MiB
    assert (_cg("pids", sandbox) / "pids.max").read_text().strip() == "1024"


def test_sandbox_cannot_raise_its_limits(sandbox: Sandbox) -> None:
    """/sys/fs/cgroup is read-only inside: a sandbox cannot lift its own limits."""
    result = sandbox.run(
        "echo max > /sys/fs/cgroup/pids/pids.max;"
        " echo -1 > /sys/fs/cgroup/memory/memory.limit_in_bytes;"
        " echo -1 > /sys/fs/cgroup/cpu/cpu.cfs_quota_us"
    )
    assert result.stderr.count("Read-only file system") == 3, result
    assert (_cg("pids", sandbox) / "pids.max").read_text().strip() == "1024"
    assert int((_cg("memory", sandbox) / "memory.limit_in_bytes").read_text()) == 256 * MiB
    assert int((_cg("cpu", sandbox) / "cpu.cfs_quota_us").read_text()) == 50_000


# -- cleanup -----------------------------------------------------------------------------------


def test_delete_leaves_nothing_behind(
    server: Server, client: SandboxClient, bb_template: str
) -> None:
    """After delete: no mount, runc container, cgroup, bundle or process of the sandbox remains."""
    sb = client.create_sandbox(bb_template)
    try:
        assert sb.id is not None
        sandbox_id = sb.id
        sb.run(
            "sleep 1000 & setsid sleep 1001 & (sleep 1002 &);"
            " start-stop-daemon -S -b -x /bin/sleep -- 1003"
        )
        procs = _procs(_cg("pids", sb)) | _procs(_cg("freezer", sb))
        assert len(procs) >= 5  # init and the four sleeps
        assert sandbox_id in server.runc_ids()
        assert (server.data_dir / "sandboxes" / sandbox_id).is_dir()
        assert [p / "rootfs" for p in Path("/run/hutch").glob(f"*/{sandbox_id}")]
        assert (server.data_dir / "storage" / sandbox_id / "upper").is_dir()
        assert _leftovers(sandbox_id, server.data_dir) != []
    finally:
        client.delete_sandbox(sb.name)
    assert _leftovers(sandbox_id, server.data_dir) == []
    assert sandbox_id not in server.runc_ids()
    assert _alive(procs) == []
    with server.http() as http:
        resp = http.post(f"/dp/{sandbox_id}/execute", json={"command": "echo"})
    assert resp.status_code == 404


# -- kill tree ---------------------------------------------------------------------------------


def test_timeout_kills_the_whole_tree(sandbox: Sandbox) -> None:
    """On timeout every process the command started dies, even after setsid or a double fork."""
    freezer = _cg("freezer", sandbox)
    seen: dict[int, str] = {}

    def sleeps_running() -> bool:
        seen.update(
            {pid: start for pid, start in _procs(freezer).items() if _argv0(pid).endswith(b"sleep")}
        )
        return len(seen) >= 5

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            sandbox.run,
            "sleep 100 & setsid sleep 200 & (sleep 250 &);"
            " start-stop-daemon -S -b -x /bin/sleep -- 260; sleep 300",
            timeout=int(2 * TIME_SCALE),
        )
        assert wait_until(sleeps_running, 10), f"only saw {seen}"
        with pytest.raises(CommandTimeoutError):
            future.result(timeout=30 * TIME_SCALE)
    assert _alive(seen) == []
    assert "sleep" not in sandbox.run("ps -o args").stdout
    # Only the init is left in the sandbox's cgroup.
    left = _procs(_cg("pids", sandbox))
    assert [_argv0(pid) for pid in left] == [INIT.encode()]
