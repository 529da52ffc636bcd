"""One server per data dir, and a server that cannot start touches nothing of a running one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hutch import Sandbox
from hutch.server._servers import DataDirBusy, lock_data_dir
from tests.conftest import API_KEY, HUTCH, TIME_SCALE, Server, free_port

pytestmark = pytest.mark.root


def _serve(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    """Run ``hutch serve`` to its end (it must end on its own, and soon)."""
    return subprocess.run(
        [*HUTCH, "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env={**os.environ, "HUTCH_API_KEY": API_KEY},
        capture_output=True,
        text=True,
        timeout=60 * TIME_SCALE,
    )


def _still_works(server: Server, sandbox: Sandbox) -> None:
    assert server.alive()
    assert sandbox.run("echo ok").stdout == "ok\n"
    sandbox.write("/tmp/after", b"still here")
    assert sandbox.read("/tmp/after") == b"still here"


def test_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    """A second lock on a data dir fails with the data dir and the holder's pid; closing the
    first frees it."""
    data = tmp_path / "data"
    first = lock_data_dir(data)
    with pytest.raises(DataDirBusy) as busy:
        lock_data_dir(data)
    assert str(data) in str(busy.value) and f"pid {os.getpid()}" in str(busy.value)
    first.close()
    lock_data_dir(data).close()


def test_second_server_on_the_same_data_dir_exits_at_once(server: Server, sandbox: Sandbox) -> None:
    """A second server on a data dir in use exits non-zero naming the dir and the pid holding
    it; the first keeps serving and its sandbox keeps running commands."""
    second = _serve(server.data_dir, free_port())
    assert second.returncode != 0
    assert str(server.data_dir) in second.stderr, second.stderr
    assert f"pid {server.proc.pid}" in second.stderr, second.stderr
    _still_works(server, sandbox)


def test_second_server_on_a_taken_port_sets_nothing_up(
    server: Server, sandbox: Sandbox, tmp_path: Path
) -> None:
    """A server on its own data dir but the port of a running one fails to bind before it
    sets anything up (so its exit tears nothing down); the first is undisturbed."""
    other = tmp_path / "other"
    port = int(server.url.rsplit(":", 1)[1])
    second = _serve(other, port)
    assert second.returncode != 0
    assert f"--port {port}" in second.stderr, second.stderr
    assert sorted(p.name for p in other.iterdir()) == ["lock"]  # no pool, no database
    _still_works(server, sandbox)
