"""Sandbox lifetimes against a real server, with TTLs of seconds (the SDKs insist on multiples of
60, and so does the server unless started with ``--ttl-granularity 1``, as here): the reaper
is held off by activity, PATCH moves deadlines, a deadline passed while the server was down is
met when it starts. The deadlines themselves (a ttl deletes at its deadline, a sandbox created
without a template is stopped when idle, then deleted after ``delete_after_stop_seconds``) are
proved on a fake clock in ``test_lifetimes_clock.py``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from hutch import SandboxClient
from tests.conftest import (
    TIME_SCALE,
    Server,
    data_dir_with_busybox,
    remove_all_sandboxes,
    start_server,
    stop_server,
    wait_until,
)

pytestmark = pytest.mark.root
BOXES = "/v2/sandboxes/boxes"
#: Slack on top of a deadline before a sandbox must be gone (reaper wake-up, delete, polling).
SLACK = 3 * TIME_SCALE
ARGS = ("--default-image", "local/busybox", "--ttl-granularity", "1")


class Restartable:
    """A server of this module's own, with the busybox image as its default image."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.srv = start_server(data, *ARGS)

    def restart(self) -> None:
        stop_server(self.srv)
        self.srv = start_server(self.data, *ARGS)

    def http(self) -> httpx.Client:
        return self.srv.http()


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Restartable]:
    data = data_dir_with_busybox(tmp_path_factory.mktemp("lifetimes"), busybox_tar)
    r = Restartable(data)
    with r.http() as http:
        body = {"name": "bb", "image": "local/busybox", "resources": {"memory": "64Mi"}}
        assert http.post("/v2/sandboxes/templates", json=body).status_code == 201
    try:
        yield r
    finally:
        stop_server(r.srv)
        remove_all_sandboxes(data)


def create(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post(BOXES, json={"template_name": "bb", **body})
    assert r.status_code == 201, r.text
    got: dict[str, Any] = r.json()
    return got


def exists(http: httpx.Client, name: str) -> bool:
    r = http.get(f"{BOXES}/{name}")
    assert r.status_code in (200, 404), r.text
    return r.status_code == 200


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def test_running_command_holds_off_the_idle_ttl(box: Restartable) -> None:
    """idle_ttl_seconds=2 and a streamed command of 5 s: the sandbox outlives the TTL while it
    runs, and goes about 2 s after it ends."""
    with box.http() as http, box.srv.client() as client:
        sb = create(http, idle_ttl_seconds=2)
        handle = client.get_sandbox(sb["name"]).run(
            "echo start; sleep 5; echo end", timeout=0, wait=False
        )
        time.sleep(4)
        assert exists(http, sb["name"]), "deleted while a command ran"
        assert handle.result.stdout == "start\nend\n"
        ended = time.monotonic()
        assert wait_until(lambda: not exists(http, sb["name"]), 2 + 1 + SLACK, interval=0.1)
        assert 1.5 <= time.monotonic() - ended <= 2 + 1 + SLACK


def test_blocking_execute_holds_off_the_idle_ttl(box: Restartable) -> None:
    """A 4 s POST /execute keeps a sandbox with idle_ttl_seconds=2 alive until it answers."""
    with box.http() as http:
        sb = create(http, idle_ttl_seconds=2)
        r = http.post(f"/dp/{sb['id']}/execute", json={"command": "sleep 4; echo ok"})
        assert r.status_code == 200 and r.json()["stdout"] == "ok\n"
        assert exists(http, sb["name"])
        assert wait_until(lambda: not exists(http, sb["name"]), 2 + SLACK, interval=0.1)


def test_patch_sets_and_clears_lifetimes(box: Restartable) -> None:
    """PATCH sets a lifetime, 0 clears it, {} changes nothing; expires_at follows; a TTL already
    past deletes the sandbox at once; bad values and unsupported fields are refused."""
    with box.http() as http:
        sb = create(http)
        name, created = sb["name"], parse(sb["created_at"])
        assert sb["expires_at"] is None and sb["ttl_seconds"] is None
        r = http.patch(f"{BOXES}/{name}", json={"ttl_seconds": 600})
        assert r.status_code == 200
        assert (parse(r.json()["expires_at"]) - created).total_seconds() == 600
        r = http.patch(f"{BOXES}/{name}", json={"idle_ttl_seconds": 300})
        got = r.json()
        assert (got["ttl_seconds"], got["idle_ttl_seconds"]) == (600, 300)
        idle_deadline = (parse(got["expires_at"]) - datetime.now(UTC)).total_seconds()
        assert 290 < idle_deadline <= 300  # the idle deadline comes first now
        r = http.patch(f"{BOXES}/{name}", json={})
        assert r.status_code == 200 and r.json()["ttl_seconds"] == 600
        r = http.patch(f"{BOXES}/{name}", json={"ttl_seconds": 0, "idle_ttl_seconds": 0})
        assert (r.json()["ttl_seconds"], r.json()["expires_at"]) == (None, None)

        r = http.patch(f"{BOXES}/{name}", json={"ttl_seconds": -60})
        assert r.status_code == 422 and r.json()["detail"]["error"] == "ValidationError"
        header_rule = {"name": "h", "headers": [{"name": "X", "type": "plaintext", "value": "v"}]}
        r = http.patch(f"{BOXES}/{name}", json={"proxy_config": {"rules": [header_rule]}})
        assert r.status_code == 400 and "match_hosts" in r.json()["detail"]["message"]
        r = http.patch(f"{BOXES}/no-such-box", json={"ttl_seconds": 60})
        assert r.status_code == 404

        time.sleep(1.1)
        t0 = time.monotonic()
        r = http.patch(f"{BOXES}/{name}", json={"ttl_seconds": 1})  # already a second old
        assert r.status_code == 200
        assert wait_until(lambda: not exists(http, name), SLACK, interval=0.05)
        assert time.monotonic() - t0 < SLACK


def test_deadline_passed_while_down_is_met_at_start(box: Restartable) -> None:
    """A TTL that ran out while the server was stopped deletes the sandbox as the server starts;
    one that did not is kept, with the same expires_at."""
    with box.http() as http:
        short = create(http, ttl_seconds=3)
        long = create(http, ttl_seconds=3600)
    stop_server(box.srv)
    time.sleep(3.5)
    box.srv = start_server(box.data, *ARGS)
    started = time.monotonic()
    with box.http() as http:
        assert wait_until(lambda: not exists(http, short["name"]), SLACK, interval=0.05)
        assert time.monotonic() - started < SLACK
        assert short["id"] not in box.srv.runc_ids()
        kept = http.get(f"{BOXES}/{long['name']}").json()
        assert kept["status"] == "ready" and kept["expires_at"] == long["expires_at"]
        http.delete(f"{BOXES}/{long['name']}")


def test_default_image_and_newer_create_fields(box: Restartable) -> None:
    """POST /boxes with no template uses --default-image; vcpus and mem_bytes set the limits;
    fields of features hutch lacks are refused with 501 naming them."""
    with box.http() as http:
        r = http.post(BOXES, json={"mem_bytes": 48 * 1024**2, "vcpus": 1})
        assert r.status_code == 201, r.text
        sb = r.json()
        limit = Path(f"/sys/fs/cgroup/memory/hutch/{sb['id']}/memory.limit_in_bytes")
        assert int(limit.read_text()) == 48 * 1024**2
        r = http.post(f"/dp/{sb['id']}/execute", json={"command": "echo $HOSTNAME"})
        assert r.json()["stdout"] == f"{sb['name']}\n"
        http.delete(f"{BOXES}/{sb['name']}")

        r = http.post(BOXES, json={"vcpus": 4096})
        assert r.status_code == 422 and "cpu" in r.json()["detail"]["message"]
        for field, value, feature in [
            ("proxy_config", {"rules": [{"name": "aws", "type": "aws"}]}, "AWS"),
            ("mount_config", {}, "Mounts"),
            ("preserve_memory_on_stop", True, "Memory snapshots"),
            ("tag_value_ids", ["t"], "Governed tags"),
            ("access_delegation", {"mode": "EXPLICIT"}, "Access delegation"),
        ]:
            r = http.post(BOXES, json={field: value})
            assert r.status_code == 501, (field, r.text)
            assert r.json()["detail"]["error"] == "NotImplemented"
            assert feature in r.json()["detail"]["message"], r.text
        assert http.post(BOXES, json={"persistent": True, "name": "kept"}).status_code == 201
        http.delete(f"{BOXES}/kept")


def test_no_default_image_is_a_clear_4xx(server: Server, client: SandboxClient) -> None:
    """Without --default-image, a create without a template is refused with 422 saying how to
    set one; the server keeps serving."""
    with server.http() as http:
        r = http.post("/api/v2/sandboxes/boxes", json={"wait_for_ready": True, "timeout": 30})
        assert r.status_code == 422
        detail = r.json()["detail"]
        assert detail["error"] == "ValidationError"
        assert "--default-image" in detail["message"] and "HUTCH_DEFAULT_IMAGE" in detail["message"]
    assert client.list_templates() is not None


def test_default_image_from_environment(tmp_path: Path, busybox_tar: Path) -> None:
    """HUTCH_DEFAULT_IMAGE sets the default image as --default-image does; a malformed name
    stops the server at start with a clear message."""
    data = tmp_path / "data"
    data.mkdir()
    srv = start_server(data, env={"HUTCH_DEFAULT_IMAGE": "local/busybox"})
    try:
        srv.import_image("local/busybox", busybox_tar)
        with srv.http() as http:
            r = http.post(BOXES, json={})
            assert r.status_code == 201, r.text
            assert r.json()["image"] == "local/busybox:latest"
    finally:
        stop_server(srv)
        remove_all_sandboxes(data)
    with pytest.raises(RuntimeError, match="--default-image"):
        start_server(data, "--default-image", "Bad Name")
