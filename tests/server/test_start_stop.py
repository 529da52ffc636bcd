"""Stopping and starting sandboxes through the API (spec §8): a stopped sandbox holds no process,
container or cgroup but keeps its files; its data plane answers a clear NotReady; it stays stopped
across a server restart; start brings it back with its files."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hutch import SandboxClient, SandboxNotReadyError
from tests.conftest import (
    Server,
    data_dir_with_busybox,
    remove_all_sandboxes,
    start_server,
    stop_server,
    wait_until,
)

pytestmark = pytest.mark.root
BOXES = "/v2/sandboxes/boxes"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[list[Server]]:
    """A server of this module's own (tests restart it); ``srv[0]`` is the current one."""
    data = data_dir_with_busybox(tmp_path_factory.mktemp("startstop"), busybox_tar)
    holder = [start_server(data)]
    with holder[0].client() as c:
        c.create_template("bb", "local/busybox", memory="64Mi")
    try:
        yield holder
    finally:
        stop_server(holder[0])
        remove_all_sandboxes(data)


def cgroups(sandbox_id: str) -> list[Path]:
    return list(Path("/sys/fs/cgroup").glob(f"*/hutch/{sandbox_id}"))


def refusals(http: httpx.Client, sandbox_id: str) -> list[tuple[int, str | None]]:
    """Status and error type of /execute, /upload, /download and an /execute/ws upgrade."""
    dp = f"/dp/{sandbox_id}"
    answers = [
        http.post(f"{dp}/execute", json={"command": "true"}),
        http.post(f"{dp}/upload", params={"path": "/x"}, files={"file": ("f", b"x")}),
        http.get(f"{dp}/download", params={"path": "/etc/hostname"}),
        http.get(
            f"{dp}/execute/ws",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        ),
    ]
    return [(r.status_code, r.json()["detail"]["error"]) for r in answers]


def test_stop_keeps_files_frees_everything_else(srv: list[Server]) -> None:
    """Stop: status stopped, no runc container, no cgroup, commands killed, data plane refused
    with NotReady naming start; a restart keeps it stopped; start: ready with its files."""
    server = srv[0]
    with server.client() as client, server.http() as http:
        sb = client.create_sandbox("bb", name="keeper")
        sb.write("/home/user/note.txt", "before stop\n")
        sb.run("mkdir -p /srv/data && echo deep > /srv/data/f")
        handle = sb.run("sleep 300", timeout=0, wait=False)
        assert sb.id in server.runc_ids() and cgroups(sb.id)

        r = http.post(f"{BOXES}/keeper/stop", json={})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "stopped" and r.json()["stopped_at"] is not None
        assert sb.id not in server.runc_ids()
        state = subprocess.run(
            ["runc", "--root", str(server.data_dir / "runc"), "state", sb.id],
            capture_output=True,
            text=True,
        )
        assert state.returncode != 0 and "does not exist" in state.stderr
        assert cgroups(sb.id) == []
        assert client.get_sandbox_status("keeper").status == "stopped"
        assert refusals(http, sb.id) == [(400, "NotReady")] * 4
        msg = http.post(f"/dp/{sb.id}/execute", json={"command": "true"}).json()["detail"]
        assert "is stopped" in msg["message"] and "start_sandbox('keeper')" in msg["message"]
        with pytest.raises(SandboxNotReadyError):  # the object still says ready: the server says no
            sb.run("true")
        assert handle.result.exit_code == 137  # the command died with the stop
        # Stopping again is fine; stopping or starting what does not exist is a 404.
        assert http.post(f"{BOXES}/keeper/stop", json={}).json()["status"] == "stopped"
        assert http.post(f"{BOXES}/nobody/stop", json={}).status_code == 404
        assert http.post(f"{BOXES}/nobody/start", json={}).status_code == 404

    stop_server(server)
    srv[0] = server = start_server(server.data_dir)
    with server.client() as client, server.http() as http:
        assert client.get_sandbox("keeper").status == "stopped"
        assert sb.id not in server.runc_ids() and cgroups(sb.id) == []

        fresh = client.start_sandbox("keeper")
        assert fresh.status == "ready"
        assert http.get(f"{BOXES}/keeper").json()["stopped_at"] is None
        assert sb.id in server.runc_ids()
        assert fresh.read("/home/user/note.txt") == b"before stop\n"
        assert fresh.run("cat /srv/data/f; pgrep sleep || echo none").stdout == "deep\nnone\n"
        # Starting a ready sandbox changes nothing.
        assert http.post(f"{BOXES}/keeper/start", json={}).json()["status"] == "ready"
        client.delete_sandbox("keeper")
    assert not any(p.name == sb.id for p in (server.data_dir / "sandboxes").iterdir())


def test_sdk_stop_start_and_lifetimes_of_a_stopped_sandbox(srv: list[Server]) -> None:
    """Sandbox.stop()/start() update the object; a stopped sandbox can be renamed and deleted;
    a failed sandbox cannot be started or stopped (NotReady naming what to do)."""
    with srv[0].client() as client, srv[0].http() as http:
        with client.sandbox("bb") as sb:
            sb.write("f", "1")
            sb.stop()
            assert sb.status == "stopped"
            with pytest.raises(SandboxNotReadyError):
                sb.read("f")
            renamed = client.update_sandbox(sb.name, new_name=f"{sb.name}-x", ttl_seconds=600)
            assert renamed.status == "stopped" and renamed.expires_at is not None
            sb.name = renamed.name
            sb.start()
            assert sb.status == "ready" and sb.read("f") == b"1"
            sb.stop()
        assert sb.name not in [s.name for s in client.list_sandboxes()]

        body = {"name": "broken", "template_name": "bad"}
        http.post("/v2/sandboxes/templates", json={"name": "bad", "image": "local/missing"})
        r = http.post(BOXES, json={**body, "wait_for_ready": False})
        assert r.status_code == 201
        assert wait_until(lambda: client.get_sandbox_status("broken").status == "failed")
        for op in ("start", "stop"):
            r = http.post(f"{BOXES}/broken/{op}", json={})
            assert r.status_code == 400, r.text
            assert r.json()["detail"]["error"] == "NotReady"
        http.delete(f"{BOXES}/broken")
        http.delete("/v2/sandboxes/templates/bad")


def test_stop_over_the_api_prefix_of_newer_sdks(
    server: Server, client: SandboxClient, bb_template: str
) -> None:
    """The same routes under /api/v2/sandboxes (0.15's base)."""
    sb = client.create_sandbox(bb_template)
    with server.http() as http:
        assert http.post(f"/api/v2/sandboxes/boxes/{sb.name}/stop").status_code == 200
        assert http.get(f"/api/v2/sandboxes/boxes/{sb.name}/status").json()["status"] == "stopped"
        assert http.post(f"/api/v2/sandboxes/boxes/{sb.name}/start").status_code == 200
    assert client.get_sandbox(sb.name).run("echo up").stdout == "up\n"
    client.delete_sandbox(sb.name)
