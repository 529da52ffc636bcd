"""A restarted server takes back each sandbox's control socket from its init (issue 12).

The init holds a copy of the server's end of its control socket (PARK in ``hutch-init.c``), so
a server that stops or is killed leaves the socket open, and the next one takes it back with
``pidfd_getfd``: commands keep starting through the init (a child of pid 1, not a ``runc exec``
whose parent is outside the sandbox), and what the init said meanwhile about the earlier
server's commands does not confuse the new one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    Server,
    data_dir_with_busybox,
    remove_all_sandboxes,
    start_server,
    stop_server,
)
from tests.faults.test_crash_restart import ok

pytestmark = pytest.mark.root
API = "/api/v2/sandboxes"
ARGS = ("--default-image", "local/busybox")


def run(http: httpx.Client, box: dict[str, Any], command: str) -> dict[str, Any]:
    out: dict[str, Any] = ok(http.post(f"/dp/{box['id']}/execute", json={"command": command}))
    return out


@pytest.fixture
def data(tmp_path: Path, busybox_tar: Path) -> Iterator[Path]:
    d = data_dir_with_busybox(tmp_path, busybox_tar)
    try:
        yield d
    finally:
        remove_all_sandboxes(d)


def _restart(srv: Server, data: Path, how: str) -> Server:
    if how == "kill -9":
        srv.proc.kill()
        srv.proc.wait()
    else:
        stop_server(srv)
    return start_server(data, *ARGS)


def _run_quietly(srv: Server, box: dict[str, Any], command: str) -> None:
    with srv.http() as http, contextlib.suppress(httpx.HTTPError):
        http.post(f"/dp/{box['id']}/execute", json={"command": command})


@pytest.mark.parametrize("how", ["kill -9", "graceful"])
def test_commands_start_through_the_init_after_a_restart(data: Path, how: str) -> None:
    """After a restart, commands still start as children of the sandbox's init (no runc exec),
    with the earlier server's command ids and late exits ignored, many times over."""
    srv = start_server(data, *ARGS)
    try:
        with srv.http() as http:
            box = ok(http.post(f"{API}/boxes", json={"name": "keep"}))
            assert run(http, box, "echo $PPID")["stdout"] == "1\n"
            run(http, box, "sleep 300 >/dev/null 2>&1 &")
        # A command of this server still running at the restart: its exit comes to the next
        # server, about an id that server never used.
        pending = threading.Thread(target=_run_quietly, args=(srv, box, "sleep 1"), daemon=True)
        pending.start()
        time.sleep(0.3)  # let it start; not a synchronisation
        srv = _restart(srv, data, how)
        pending.join()
        time.sleep(1)  # the "sleep 1" ends meanwhile; not a synchronisation
        with srv.http() as http:
            for i in range(20):  # ids past the earlier server's: no collision with its spawns
                out = run(http, box, f"echo $PPID {i}")
                assert (out["stdout"], out["exit_code"]) == (f"1 {i}\n", 0)
            assert "sleep 300" in run(http, box, "ps -o args")["stdout"]
            # A second restart takes back the same socket again.
        srv = _restart(srv, data, how)
        with srv.http() as http:
            assert run(http, box, "echo $PPID")["stdout"] == "1\n"
            # Stop and start: a new init and a new socket, parked again.
            ok(http.post(f"{API}/boxes/keep/stop"))
            ok(http.post(f"{API}/boxes/keep/start"))
            assert run(http, box, "echo $PPID")["stdout"] == "1\n"
        srv = _restart(srv, data, how)
        with srv.http() as http:
            assert run(http, box, "echo $PPID")["stdout"] == "1\n"
            ok(http.delete(f"{API}/boxes/keep"))
    finally:
        stop_server(srv)


def test_a_sandbox_without_a_parked_socket_uses_runc_exec(data: Path) -> None:
    """A sandbox whose init holds no socket (started before this feature: no ``init.ctl`` in its
    bundle) still runs commands after a restart, through ``runc exec``."""
    srv = start_server(data, *ARGS)
    try:
        with srv.http() as http:
            box = ok(http.post(f"{API}/boxes", json={"name": "old"}))
        stop_server(srv)
        ctl = data / "sandboxes" / box["id"] / "init.ctl"
        assert ctl.is_file()
        ctl.unlink()
        srv = start_server(data, *ARGS)
        with srv.http() as http:
            out = run(http, box, "echo $PPID")
            assert (out["stdout"], out["exit_code"]) == ("0\n", 0)  # its parent: outside
    finally:
        stop_server(srv)
