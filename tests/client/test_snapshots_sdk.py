"""hutch's own SDK against a real server: snapshots built from an image, booted, captured from a
sandbox and booted again, tags, listing, deletion, and the errors of each (spec §9.1)."""

from __future__ import annotations

import uuid

import pytest

from hutch import (
    AsyncSandboxClient,
    ResourceNotFoundError,
    RunConfig,
    SandboxClient,
    Snapshot,
    SnapshotTag,
    ValidationError,
)
from tests.conftest import Server

pytestmark = pytest.mark.root
GiB = 1 << 30


def unique(prefix: str) -> str:
    """A snapshot name no other test of the session server uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_build_boot_capture_boot(client: SandboxClient) -> None:
    """create_snapshot is ready at once; a sandbox booted from it keeps what a capture saw."""
    name = unique("sdk-base")
    snap = client.create_snapshot(name, "local/busybox", GiB, tag="v1")
    assert isinstance(snap, Snapshot)
    assert (snap.status, snap.name, snap.tags, snap.fs_capacity_bytes) == (
        "ready",
        name,
        ["v1"],
        GiB,
    )
    assert snap.docker_image == "local/busybox" and snap.id

    captured = unique("sdk-capture")
    with client.sandbox(snapshot=f"{name}:v1") as sb:
        assert sb.snapshot_id == snap.id
        assert sb.template_name == ""
        sb.write("/root/kept.txt", "from the first sandbox\n")
        cap = sb.capture_snapshot(captured)
    assert (cap.status, cap.name, cap.tags, cap.source_sandbox_id) == (
        "ready",
        captured,
        ["latest"],
        sb.id,
    )

    with client.sandbox(snapshot_id=cap.id) as sb2:
        assert sb2.read("/root/kept.txt") == b"from the first sandbox\n"
        assert sb2.run("cat /root/kept.txt").stdout == "from the first sandbox\n"

    for ref in (cap.id, captured, f"{captured}:latest"):
        assert client.get_snapshot(ref).id == cap.id
    client.delete_snapshot(cap.id)
    client.delete_snapshot(snap.id)


def test_tags_list_and_delete(client: SandboxClient) -> None:
    """Tags move to the newest snapshot; list filters by name; delete removes it and its tags."""
    name = unique("sdk-tags")
    first = client.create_snapshot(name, "local/busybox", GiB, tag="a")
    second = client.create_snapshot(name, "local/busybox", GiB, tag="a")
    third = client.create_snapshot(name, "local/busybox", GiB, tag="b")
    tags = client.list_snapshot_tags(name)
    assert all(isinstance(t, SnapshotTag) for t in tags)
    assert {(t.tag, t.snapshot_id) for t in tags} == {("a", second.id), ("b", third.id)}
    assert client.get_snapshot(first.id).tags == []  # dangling: reachable by id only

    listed = client.list_snapshots(name_contains=name.upper())
    assert [s.id for s in listed] == [third.id, second.id, first.id]  # newest first
    assert [s.id for s in client.list_snapshots(name_contains=name, limit=1, offset=1)] == [
        second.id
    ]
    assert client.list_snapshots(name_contains=unique("nothing")) == []

    for snap in (first, second, third):
        client.delete_snapshot(snap.id)
    assert client.list_snapshots(name_contains=name) == []


def test_run_config_and_labels(client: SandboxClient) -> None:
    """run_config given to the snapshot and the sandbox layers; labels come back on the sandbox."""
    name = unique("sdk-rc")
    snap = client.create_snapshot(
        name, "local/busybox", GiB, run_config=RunConfig(work_dir="/tmp", env_vars={"A": "1"})
    )
    assert snap.run_config is not None and snap.run_config.work_dir == "/tmp"
    with client.sandbox(
        snapshot=name, run_config={"env_vars": {"B": "2"}}, labels={"team": "sdk"}
    ) as sb:
        assert sb.labels == {"team": "sdk"}
        assert sb.run_config is not None and sb.run_config.env_vars == {"A": "1", "B": "2"}
        assert sb.run('echo "$A$B $PWD"', shell="/bin/sh").stdout == "12 /tmp\n"
    client.delete_snapshot(snap.id)


def test_not_found_errors(client: SandboxClient, bb_template: str) -> None:
    """404s name the kind of resource: snapshot for snapshot calls, sandbox for a capture."""
    missing = unique("sdk-missing")
    for call in (
        lambda: client.get_snapshot(missing),
        lambda: client.get_snapshot(str(uuid.uuid4())),
        lambda: client.delete_snapshot(missing),
        lambda: client.list_snapshot_tags(missing),
        lambda: client.wait_for_snapshot(missing, timeout=1),
        lambda: client.create_sandbox(snapshot=missing),
    ):
        with pytest.raises(ResourceNotFoundError) as info:
            call()
        assert (info.value.resource_type, info.value.status) == ("snapshot", 404)
    with pytest.raises(ResourceNotFoundError) as info:
        client.capture_snapshot(unique("no-such-box"), unique("x"))
    assert info.value.resource_type == "sandbox"
    with pytest.raises(ValidationError):
        client.list_snapshot_tags("name:with-tag")


def test_arguments_checked_before_sending(client: SandboxClient) -> None:
    """Two snapshot forms, or a template with a snapshot, fail before any request."""
    with pytest.raises(ValueError, match="not both"):
        client.create_sandbox(snapshot_id="a", snapshot="b")
    with pytest.raises(ValueError, match="template_name or a snapshot"):
        client.create_sandbox("bb", snapshot="b")
    with pytest.raises(ValueError, match="template_name or a snapshot"):
        client.sandbox("bb", snapshot_id="a")


async def test_async_create_boot_run(server: Server) -> None:
    """The async client builds a snapshot, boots it and runs a command there."""
    name = unique("sdk-async")
    async with AsyncSandboxClient(api_endpoint=server.base, api_key=server.key) as aclient:
        snap = await aclient.create_snapshot(name, "local/busybox", GiB)
        assert snap.status == "ready"
        async with await aclient.sandbox(snapshot=snap.id) as sb:
            result = await sb.run("echo hi from a snapshot", shell="/bin/sh")
            assert (result.exit_code, result.stdout) == (0, "hi from a snapshot\n")
            cap = await sb.capture_snapshot(unique("sdk-async-cap"), tag="t")
            assert cap.tags == ["t"]
        assert [s.id for s in await aclient.list_snapshots(name_contains=name)] == [snap.id]
        await aclient.delete_snapshot(cap.id)
        await aclient.delete_snapshot(snap.id)
        with pytest.raises(ResourceNotFoundError):
            await aclient.get_snapshot(snap.id)


def test_non_persistent_sandbox(client: SandboxClient) -> None:
    """persistent=False reaches the server: the sandbox says so, and a stop throws away what it
    wrote, while the snapshot's files come back."""
    snap = client.create_snapshot(unique("sdk-np"), "local/busybox", GiB)
    with client.sandbox(snapshot_id=snap.id, persistent=False) as sb:
        assert sb.persistent is False
        sb.write("/root/scratch.txt", "gone at the stop\n")
        sb.stop()
        sb.start()
        assert sb.run("ls /root/scratch.txt 2>&1; true").stdout.endswith(
            "No such file or directory\n"
        )
    with client.sandbox(snapshot_id=snap.id) as kept:
        assert kept.persistent is True
    client.delete_snapshot(snap.id)
