"""User namespaces and CPU limits, checked from the host.

Root in a sandbox is host uid 1048576 (``_userns.DEFAULT_BASE``): the map is not the identity,
files the sandbox writes belong to that uid on disk, files the server writes for it too, and the
shared image layers are seen shifted without being changed.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch import Sandbox, SandboxClient
from hutch.runtime.images._store import _mounted_layer_names
from hutch.runtime.runc._userns import DEFAULT_BASE
from tests.conftest import TIME_SCALE, Server

pytestmark = pytest.mark.root

CGROUP = Path("/sys/fs/cgroup")


def _upper(server: Server, sb: Sandbox) -> Path:
    return server.data_dir / "storage" / str(sb.id) / "upper"


def test_uid_map_is_not_the_identity(sandbox: Sandbox) -> None:
    res = sandbox.run("cat /proc/self/uid_map /proc/self/gid_map; id -u")
    rows = [line.split() for line in res.stdout.splitlines()]
    assert rows[:2] == [["0", str(DEFAULT_BASE), "65536"]] * 2
    assert rows[2] == ["0"]  # still root inside


def test_files_of_sandbox_root_belong_to_an_unprivileged_host_uid(
    server: Server, sandbox: Sandbox
) -> None:
    sandbox.run("echo hi > /tmp/by-root && mkdir -p /srv/d && chown 1000:1000 /srv/d")
    upper = _upper(server, sandbox)
    st = (upper / "tmp" / "by-root").stat()
    assert (st.st_uid, st.st_gid) == (DEFAULT_BASE, DEFAULT_BASE)
    assert (upper / "srv" / "d").stat().st_uid == DEFAULT_BASE + 1000


def test_files_the_server_writes_belong_to_sandbox_root(server: Server, sandbox: Sandbox) -> None:
    """sb.write creates files (and parent directories) the sandbox's root owns and can change."""
    sandbox.write("/home/user/new/dir/f.txt", "from the api\n")
    res = sandbox.run(
        "stat -c '%u:%g' /home/user/new/dir/f.txt /home/user/new; "
        "echo more >> /home/user/new/dir/f.txt && rm -r /home/user/new/dir && echo ok"
    )
    assert res.stdout.splitlines() == ["0:0", "0:0", "ok"], res
    assert (_upper(server, sandbox) / "home/user/new").stat().st_uid == DEFAULT_BASE


def test_image_layers_are_seen_shifted_not_changed(server: Server, sandbox: Sandbox) -> None:
    """Image files are root's inside; in the store they keep their own owner (0); a running
    sandbox's layers count as in use for the image garbage collector."""
    assert sandbox.run("stat -c %u /bin/busybox").stdout == "0\n"
    assert sandbox.run("echo x > /bin/new-file && echo ok").stdout == "ok\n"  # copy-up works
    store = server.data_dir / "images" / "layers" / "sha256"
    layers = list(store.iterdir())
    assert layers and all(p.stat().st_uid == 0 for p in layers)
    assert {p.name for p in layers} & _mounted_layer_names(store, server.data_dir / "sandboxes")


@pytest.fixture
def half_core(client: SandboxClient) -> Iterator[Sandbox]:
    name = f"cpu-{secrets.token_hex(4)}"
    client.create_template(name, "local/busybox", cpu="500m")
    try:
        with client.sandbox(name) as sb:
            yield sb
    finally:
        client.delete_template(name)


def test_cpu_bound_loop_gets_about_half_a_core(half_core: Sandbox) -> None:
    """Two busy loops in a 500m sandbox share half a core between them (measured from cpuacct)."""
    usage = CGROUP / "cpuacct" / "hutch" / str(half_core.id) / "cpuacct.usage"
    loops = half_core.run(
        "for i in 1 2; do (while :; do :; done) & done; sleep 600", wait=False, timeout=0
    )
    try:
        time.sleep(0.5 * TIME_SCALE)  # let both loops start
        t0, u0 = time.monotonic(), int(usage.read_text())
        time.sleep(3.0)
        t1, u1 = time.monotonic(), int(usage.read_text())
    finally:
        loops.kill()
    share = (u1 - u0) / 1e9 / (t1 - t0)
    assert 0.35 <= share <= 0.55, f"{share:.2f} of a core"
