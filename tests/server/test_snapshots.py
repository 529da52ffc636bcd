"""Snapshots against a real server (spec §8, §9.1): build from an image, tags as mutable
pointers, capture a sandbox's files copy-on-write, boot from a snapshot, run_config layering,
deletion while sandboxes use it, and bad input answered in the envelope."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

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
API = "/api/v2/sandboxes"
GiB = 1 << 30


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Server]:
    data = data_dir_with_busybox(tmp_path_factory.mktemp("snapshots"), busybox_tar)
    s = start_server(data, "--default-image", "local/busybox")
    try:
        yield s
    finally:
        stop_server(s)
        remove_all_sandboxes(data)


@pytest.fixture
def http(srv: Server) -> Iterator[httpx.Client]:
    with srv.http() as c:
        yield c


def build(http: httpx.Client, name: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "docker_image": "local/busybox", "fs_capacity_bytes": GiB, **extra}
    r = http.post(f"{API}/snapshots", json=body)
    assert r.status_code == 201, r.text
    snap: dict[str, Any] = r.json()
    deadline = time.monotonic() + 30
    while snap["status"] == "building" and time.monotonic() < deadline:
        time.sleep(0.1)
        snap = http.get(f"{API}/snapshots/{snap['id']}").json()
    return snap


def boot(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post(f"{API}/boxes", json=body)
    assert r.status_code == 201, r.text
    box: dict[str, Any] = r.json()
    assert box["status"] == "ready"
    return box


def run(http: httpx.Client, box: dict[str, Any], command: str) -> str:
    r = http.post(f"/dp/{box['id']}/execute", json={"command": command})
    assert r.status_code == 200, r.text
    out: str = r.json()["stdout"]
    return out


def test_build_from_image_is_ready_with_its_facts(http: httpx.Client) -> None:
    """A snapshot built from a stored image answers ready (no poll needed) with its digest, size,
    capacity, creator and the default tag ``latest``; get by id, name:tag and bare name agree."""
    snap = build(http, "facts")
    assert snap["status"] == "ready", snap
    assert snap["image_digest"].startswith("sha256:")
    assert snap["fs_used_bytes"] > 0 and snap["fs_capacity_bytes"] == GiB
    assert snap["tags"] == ["latest"] and snap["docker_image"] == "local/busybox"
    assert snap["created_by"] and snap["source_sandbox_id"] is None
    for ref in (snap["id"], "facts:latest", "facts"):
        got = http.get(f"{API}/snapshots/{ref}")
        assert got.status_code == 200 and got.json()["id"] == snap["id"], ref
    tags = http.get(f"{API}/snapshots-by-name/facts").json()
    assert tags["tags"] == [{"tag": "latest", "snapshot_id": snap["id"]}]


def test_tags_move_and_ids_stay(http: httpx.Client) -> None:
    """Publishing a tag again moves it to the new snapshot; the old one stays addressable by id;
    one name carries many tags."""
    first = build(http, "moving", tag="v1")
    second = build(http, "moving", tag="v1")
    third = build(http, "moving", tag="v2")
    assert http.get(f"{API}/snapshots/moving:v1").json()["id"] == second["id"]
    old = http.get(f"{API}/snapshots/{first['id']}").json()
    assert old["tags"] == [] and old["status"] == "ready"
    tags = http.get(f"{API}/snapshots-by-name/moving").json()["tags"]
    assert tags == [
        {"tag": "v1", "snapshot_id": second["id"]},
        {"tag": "v2", "snapshot_id": third["id"]},
    ]
    # A bare name without a "latest" tag means the newest ready snapshot of that name.
    assert http.get(f"{API}/snapshots/moving").json()["id"] == third["id"]


def test_list_filters_and_pages(http: httpx.Client) -> None:
    """name_contains filters case-insensitively; limit and offset page newest first; limit is
    1-500."""
    for n in ("page-a", "page-b", "page-c"):
        build(http, n)
    got = http.get(f"{API}/snapshots", params={"name_contains": "PAGE-"}).json()["snapshots"]
    assert [s["name"] for s in got] == ["page-c", "page-b", "page-a"]
    page = http.get(f"{API}/snapshots", params={"name_contains": "page-", "limit": 1, "offset": 1})
    assert [s["name"] for s in page.json()["snapshots"]] == ["page-b"]
    for bad in (0, 501):
        r = http.get(f"{API}/snapshots", params={"limit": bad})
        assert r.status_code == 422 and r.json()["detail"]["error"] == "ValidationError"


def test_capture_then_boot_sees_the_files_copy_on_write(http: httpx.Client) -> None:
    """Files written in a sandbox are in a snapshot captured from it, and in sandboxes booted
    from that; later writes of either side never show in the other or in the snapshot."""
    src = boot(http, name="cap-src")
    run(http, src, "mkdir -p /data && echo one > /data/f && rm /bin/vi && echo tmp > /tmp/t")
    t0 = time.monotonic()
    r = http.post(f"{API}/boxes/cap-src/snapshot", json={"name": "captured"})
    elapsed = time.monotonic() - t0
    assert r.status_code == 201, r.text
    snap = r.json()
    assert snap["status"] == "ready" and snap["source_sandbox_id"] == src["id"]
    assert snap["tags"] == ["latest"] and elapsed < 5
    run(http, src, "echo two > /data/f")
    child = boot(http, name="cap-child", snapshot="captured")
    assert child["snapshot_id"] == snap["id"]
    assert run(http, child, "cat /data/f; test -e /bin/vi || echo no-vi") == "one\nno-vi\n"
    run(http, child, "echo three > /data/f")
    other = boot(http, name="cap-other", snapshot_id=snap["id"])
    assert run(http, other, "cat /data/f") == "one\n"
    assert run(http, src, "cat /data/f") == "two\n"
    for name in ("cap-src", "cap-child", "cap-other"):
        http.delete(f"{API}/boxes/{name}")


def test_deleting_a_snapshot_in_use_breaks_nothing(http: httpx.Client) -> None:
    """A snapshot deleted by id while a sandbox booted from it runs: the sandbox keeps its files
    across a stop and start; new boots from it answer 404."""
    src = boot(http, name="del-src")
    run(http, src, "echo kept > /k")
    snap = http.post(f"{API}/boxes/del-src/snapshot", json={"name": "doomed"}).json()
    child = boot(http, name="del-child", snapshot=snap["id"])
    assert http.delete(f"{API}/snapshots/{snap['id']}").status_code == 204
    assert run(http, child, "cat /k") == "kept\n"
    assert http.post(f"{API}/boxes/del-child/stop").status_code == 200
    assert http.post(f"{API}/boxes/del-child/start").status_code == 200
    assert run(http, child, "cat /k") == "kept\n"
    r = http.post(f"{API}/boxes", json={"snapshot": snap["id"]})
    assert r.status_code == 404 and "list_snapshots" in r.json()["detail"]["message"]
    assert http.get(f"{API}/snapshots/doomed").status_code == 404
    assert http.get(f"{API}/snapshots-by-name/doomed").status_code == 404
    for name in ("del-src", "del-child"):
        http.delete(f"{API}/boxes/{name}")


def test_capture_of_a_stopped_sandbox(http: httpx.Client) -> None:
    """A stopped sandbox's files can be captured too."""
    src = boot(http, name="stopped-src")
    run(http, src, "echo s > /s")
    http.post(f"{API}/boxes/stopped-src/stop")
    r = http.post(f"{API}/boxes/stopped-src/snapshot", json={"name": "from-stopped", "tag": "t"})
    assert r.status_code == 201 and r.json()["tags"] == ["t"]
    child = boot(http, snapshot="from-stopped:t")
    assert run(http, child, "cat /s") == "s\n"
    http.delete(f"{API}/boxes/stopped-src")
    http.delete(f"{API}/boxes/{child['name']}")


def test_run_config_layers(http: httpx.Client) -> None:
    """run_config on the snapshot, then the sandbox: work_dir replaces, env_vars merge, and
    both are returned; a capture carries the snapshot's layer plus its own override."""
    snap = build(
        http,
        "rc",
        run_config={"work_dir": "/tmp", "env_vars": {"A": "snap", "B": "snap"}},
    )
    assert snap["run_config"] == {"work_dir": "/tmp", "env_vars": {"A": "snap", "B": "snap"}}
    box = boot(http, name="rc-box", snapshot="rc", run_config={"env_vars": {"B": "box"}})
    assert box["run_config"] == {"work_dir": "/tmp", "env_vars": {"A": "snap", "B": "box"}}
    assert run(http, box, "pwd; echo $A $B") == "/tmp\nsnap box\n"
    r = http.patch(f"{API}/boxes/rc-box", json={"run_config": {"work_dir": "/"}})
    assert r.status_code == 200, r.text
    assert run(http, box, "pwd; echo $A $B") == "/\nsnap snap\n"
    cap = http.post(
        f"{API}/boxes/rc-box/snapshot",
        json={"name": "rc2", "run_config": {"env_vars": {"C": "cap"}}},
    ).json()
    assert cap["run_config"] == {
        "work_dir": "/tmp",
        "env_vars": {"A": "snap", "B": "snap", "C": "cap"},
    }
    http.delete(f"{API}/boxes/rc-box")


def test_labels_and_lifetime_defaults(http: httpx.Client) -> None:
    """Labels are stored and returned; a template-less create gets the default idle TTL (600 s)
    and lifetimes must be whole minutes."""
    box = boot(http, name="labelled", labels={"team": "a"})
    assert box["labels"] == {"team": "a"} and box["idle_ttl_seconds"] == 600
    r = http.post(f"{API}/boxes", json={"idle_ttl_seconds": 90})
    assert r.status_code == 422 and "multiple of 60" in r.json()["detail"]["message"]
    off = boot(http, idle_ttl_seconds=0)
    assert off["idle_ttl_seconds"] is None
    for name in ("labelled", off["name"]):
        http.delete(f"{API}/boxes/{name}")


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"snapshot": "nope"}, 404, "list_snapshots"),
        ({"snapshot": "Bad Name"}, 422, "not a valid snapshot name"),
        ({"snapshot": "ok:-bad"}, 422, "not a valid tag"),
        ({"snapshot": "a", "snapshot_id": "b"}, 422, "at most one"),
        ({"snapshot": "a", "template_name": "t"}, 422, "not both"),
        ({"run_config": {"work_dir": "rel"}}, 422, "absolute"),
        ({"run_config": {"shell": "x"}}, 422, "unknown field"),
    ],
)
def test_bad_boot_requests(
    http: httpx.Client, body: dict[str, Any], status: int, words: str
) -> None:
    """Bad snapshot references and run configs get the envelope with a message saying why."""
    r = http.post(f"{API}/boxes", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]["message"]


def test_failed_build_says_why_and_cannot_boot(http: httpx.Client) -> None:
    """An image that is neither stored nor pullable fails the build with the reason; booting
    from the failed snapshot is refused saying so."""
    snap = build(http, "broken", docker_image="local/nothing-here")
    assert snap["status"] == "failed" and "local store" in snap["status_message"]
    r = http.post(f"{API}/boxes", json={"snapshot_id": snap["id"]})
    assert r.status_code == 400 and "failed" in r.json()["detail"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/snapshots", {"name": "UP", "docker_image": "local/busybox"}, 422, "valid snapshot name"),
        ("/snapshots", {"name": "x", "docker_image": "oci:/etc"}, 422, "docker_image"),
        ("/snapshots", {"name": "x", "docker_image": "local/busybox", "tag": "a b"}, 422, "tag"),
        (
            "/snapshots",
            {"name": "x", "docker_image": "a", "fs_capacity_bytes": 1 << 62},
            422,
            "pool",
        ),
        ("/snapshots", {"name": "x", "docker_image": "a", "registry_id": "nope"}, 404, "Registry"),
        ("/boxes/nope/snapshot", {"name": "x"}, 404, "list_sandboxes"),
    ],
)
def test_bad_snapshot_requests(
    http: httpx.Client, path: str, body: dict[str, Any], status: int, words: str
) -> None:
    """Bad snapshot bodies get the envelope and a message naming the problem."""
    r = http.post(f"{API}{path}", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]["message"], r.text


def test_capture_refuses_memory_and_image_export(http: httpx.Client) -> None:
    """checkpoint and docker_image on a capture answer 501 naming the feature."""
    boot(http, name="cap-501")
    for extra, words in (
        ({"checkpoint": "c"}, "checkpoints"),
        ({"docker_image": "i"}, "Exporting"),
    ):
        r = http.post(f"{API}/boxes/cap-501/snapshot", json={"name": "x", **extra})
        assert r.status_code == 501 and words in r.json()["detail"]["message"]
    http.delete(f"{API}/boxes/cap-501")


def test_snapshots_are_per_workspace(srv: Server, http: httpx.Client) -> None:
    """Another workspace neither sees, boots from nor deletes this workspace's snapshots."""
    import subprocess

    from tests.conftest import HUTCH

    out = subprocess.run(
        [*HUTCH, "keys", "create", "--workspace", "other", "--data-dir", str(srv.data_dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    key = out.strip()

    def accepted() -> bool:
        with srv.http(key) as c:
            return c.get(f"{API}/snapshots").status_code == 200

    assert wait_until(accepted, 5 * TIME_SCALE)
    snap = build(http, "private")
    with httpx.Client(base_url=srv.url, headers={"X-Api-Key": key}, timeout=60) as other:
        assert other.get(f"{API}/snapshots/{snap['id']}").status_code == 404
        assert other.get(f"{API}/snapshots/private").status_code == 404
        assert all(s["id"] != snap["id"] for s in other.get(f"{API}/snapshots").json()["snapshots"])
        assert other.post(f"{API}/boxes", json={"snapshot_id": snap["id"]}).status_code == 404
        assert other.delete(f"{API}/snapshots/{snap['id']}").status_code == 404
    assert http.get(f"{API}/snapshots/{snap['id']}").status_code == 200


def test_a_clone_keeps_its_disk_limit(http: httpx.Client) -> None:
    """A sandbox booted from a captured snapshot with fs_capacity_bytes=32 MiB cannot write
    past it (EDQUOT); the snapshot's own files stay readable."""
    src = boot(http, name="quota-src")
    run(http, src, "echo base > /base")
    http.post(f"{API}/boxes/quota-src/snapshot", json={"name": "quota"})
    box = boot(http, name="quota-box", snapshot="quota", fs_capacity_bytes=32 << 20)
    r = http.post(
        f"/dp/{box['id']}/execute",
        json={"command": "dd if=/dev/zero of=/fill bs=1M count=64 2>&1; sync; cat /base"},
    )
    out = r.json()["stdout"]
    assert "quota" in out.lower() and out.endswith("base\n"), out
    for name in ("quota-src", "quota-box"):
        http.delete(f"{API}/boxes/{name}")


def test_a_stopped_snapshot_era_sandbox_resumes_on_use(http: httpx.Client) -> None:
    """A template-less sandbox stopped (as an idle stop does) starts again on its next
    data-plane call, with its files; concurrent calls resume it once."""
    box = boot(http, name="resumer")
    run(http, box, "echo kept > /k")
    assert http.post(f"{API}/boxes/resumer/stop").json()["status"] == "stopped"
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda _: run(http, box, "cat /k"), range(3)))
    assert outs == ["kept\n"] * 3
    assert http.get(f"{API}/boxes/resumer").json()["status"] == "ready"
    http.delete(f"{API}/boxes/resumer")
