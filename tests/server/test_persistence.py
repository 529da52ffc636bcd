"""What a sandbox's files go through across stops and server restarts.

* ``persistent: false`` (0.13+ SDKs): everything the sandbox wrote is thrown away at each stop;
  it starts again with the files it was created with (its captured snapshot's, over the image),
  even after that snapshot was deleted; the snapshot's files leave the host with the last such
  sandbox.
* A restart never deletes the files of a sandbox nobody asked to delete: one whose container is
  gone (a stop cut short, a host reboot) comes back ``stopped`` with its files; a delete the
  restart cut short is finished; captured-snapshot files nothing refers to are freed.
"""

from __future__ import annotations

import sqlite3
import subprocess
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

pytestmark = pytest.mark.root
API = "/api/v2/sandboxes"
ARGS = ("--default-image", "local/busybox")


class Restartable:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.srv: Server = start_server(data, *ARGS)

    def stop(self) -> None:
        stop_server(self.srv)

    def start(self) -> None:
        self.srv = start_server(self.data, *ARGS)

    def http(self) -> httpx.Client:
        return self.srv.http()

    def sql(self, statement: str, *args: object) -> None:
        """Change the server's database while it is stopped (what a crash leaves behind)."""
        with sqlite3.connect(self.data / "hutch.db") as db:
            db.execute(statement, args)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Restartable]:
    data = data_dir_with_busybox(tmp_path_factory.mktemp("persistence"), busybox_tar)
    r = Restartable(data)
    try:
        yield r
    finally:
        stop_server(r.srv)
        remove_all_sandboxes(data)


def ok(r: httpx.Response) -> Any:
    assert r.status_code < 300, (r.request.method, r.request.url.path, r.status_code, r.text)
    return r.json() if r.content else None


def run(http: httpx.Client, sb: dict[str, Any], command: str) -> str:
    out = ok(http.post(f"/dp/{sb['id']}/execute", json={"command": command}))
    assert out["exit_code"] == 0, out
    return str(out["stdout"])


def stop_start(http: httpx.Client, name: str) -> None:
    ok(http.post(f"{API}/boxes/{name}/stop"))
    assert ok(http.get(f"{API}/boxes/{name}"))["status"] == "stopped"
    ok(http.post(f"{API}/boxes/{name}/start"))


def test_non_persistent_sandbox_forgets_its_writes_at_each_stop(box: Restartable) -> None:
    """persistent=false: a file written and an image file changed are back to the image's state
    after a stop and start; the record says persistent false; a persistent one keeps both."""
    with box.http() as http:
        for name, persistent in (("forgets", False), ("keeps", True)):
            sb = ok(http.post(f"{API}/boxes", json={"name": name, "persistent": persistent}))
            assert sb["persistent"] is persistent
            run(http, sb, "echo changed >> /etc/passwd")
            for written in ("first", "second"):  # the second stop resets a fresh layer
                run(http, sb, f"echo {written} > /root/new.txt")
                stop_start(http, name)
                got = run(
                    http, sb, "cat /root/new.txt 2>/dev/null; grep -x changed /etc/passwd; true"
                )
                assert got == ("" if not persistent else f"{written}\nchanged\n"), (name, got)
            assert ok(http.get(f"{API}/boxes/{name}"))["persistent"] is persistent
            ok(http.delete(f"{API}/boxes/{name}"))


def test_non_persistent_from_a_capture_restarts_with_its_files(box: Restartable) -> None:
    """A non-persistent sandbox booted from a captured snapshot starts again with the
    snapshot's files (a changed one restored, a new one gone), also after the snapshot was
    deleted; the snapshot's files leave the host with the sandbox."""
    with box.http() as http:
        src = ok(http.post(f"{API}/boxes", json={"name": "cap-src"}))
        run(http, src, "mkdir -p /data && echo captured > /data/kept.txt")
        snap = ok(http.post(f"{API}/boxes/cap-src/snapshot", json={"name": "np-snap"}))
        ok(http.delete(f"{API}/boxes/cap-src"))
        body = {"name": "np", "snapshot_id": snap["id"], "persistent": False}
        sb = ok(http.post(f"{API}/boxes", json=body))
        layer = box.data / "storage" / ".snapshots" / snap["id"]
        for round_ in range(2):
            run(http, sb, "echo overwritten > /data/kept.txt && echo x > /data/extra.txt")
            stop_start(http, "np")
            assert run(http, sb, "cat /data/kept.txt; ls /data") == "captured\nkept.txt\n"
            if round_ == 0:  # deleted while the sandbox still needs its files
                ok(http.delete(f"{API}/snapshots/{snap['id']}"))
                assert http.get(f"{API}/snapshots/{snap['id']}").status_code == 404
                assert layer.is_dir()
        ok(http.delete(f"{API}/boxes/np"))
        assert not layer.exists()


def test_restart_after_the_container_vanished_keeps_the_files(box: Restartable) -> None:
    """A ready sandbox whose container is gone when the server starts (a stop cut short, a
    host reboot) is recorded stopped, not failed, and starts again with its files."""
    with box.http() as http:
        sb = ok(http.post(f"{API}/boxes", json={"name": "vanished"}))
        run(http, sb, "echo precious > /root/work.txt")
    box.stop()  # sandboxes outlive the server; then the container dies behind its back
    runc = ["runc", "--root", str(box.data / "runc")]
    subprocess.run([*runc, "kill", sb["id"], "KILL"], check=True)
    subprocess.run([*runc, "delete", "--force", sb["id"]], check=True)
    box.start()
    with box.http() as http:
        got = ok(http.get(f"{API}/boxes/vanished"))
        assert got["status"] == "stopped", got
        assert "start it" in got["status_message"]
        ok(http.post(f"{API}/boxes/vanished/start"))
        assert run(http, sb, "cat /root/work.txt") == "precious\n"
        ok(http.delete(f"{API}/boxes/vanished"))


def test_restart_finishes_an_interrupted_delete_and_frees_unused_snapshots(
    box: Restartable,
) -> None:
    """A record left ``deleting`` by a crash is deleted at the next start, with its container
    and files; a captured snapshot whose record is gone has its files freed; other sandboxes
    are untouched."""
    with box.http() as http:
        doomed = ok(http.post(f"{API}/boxes", json={"name": "doomed"}))
        other = ok(http.post(f"{API}/boxes", json={"name": "bystander"}))
        run(http, other, "echo mine > /root/mine.txt")
        snap = ok(http.post(f"{API}/boxes/bystander/snapshot", json={"name": "lost-record"}))
    box.stop()
    box.sql("UPDATE sandboxes SET status = 'deleting' WHERE id = ?", doomed["id"])
    box.sql("DELETE FROM snapshot_tags WHERE snapshot_id = ?", snap["id"])
    box.sql("DELETE FROM snapshots WHERE id = ?", snap["id"])
    box.start()
    storage = box.data / "storage"
    with box.http() as http:
        assert http.get(f"{API}/boxes/doomed").status_code == 404
        assert doomed["id"] not in box.srv.runc_ids()
        assert not (storage / doomed["id"]).exists()
        assert not (storage / ".snapshots" / snap["id"]).exists()
        assert not (storage / ".spares" / snap["id"]).exists()
        assert run(http, other, "cat /root/mine.txt") == "mine\n"
        ok(http.delete(f"{API}/boxes/bystander"))
