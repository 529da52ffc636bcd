"""Sandboxes over the real server: create (waiting or not), names, lookups, update, delete."""

from __future__ import annotations

import re
import uuid

import pytest

from hutch import (
    ResourceNameConflictError,
    ResourceNotFoundError,
    ResourceTimeoutError,
    SandboxAuthenticationError,
    SandboxClient,
    SandboxClientError,
    SandboxNotReadyError,
)
from tests.conftest import Server, wait_until

pytestmark = pytest.mark.root
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def test_create_waits_until_ready(client: SandboxClient, bb_template: str) -> None:
    """wait_for_ready answers a ready sandbox with a usable dataplane_url (no trailing slash)."""
    sb = client.create_sandbox(bb_template)
    try:
        assert sb.status == "ready"
        assert sb.dataplane_url and not sb.dataplane_url.endswith("/")
        assert sb.template_name == bb_template
        assert sb.run("echo ready").stdout == "ready\n"
    finally:
        client.delete_sandbox(sb.name)


def test_generated_names_are_dns_labels(client: SandboxClient, bb_template: str) -> None:
    """Omitting the name gives unique DNS-label names."""
    boxes = [client.create_sandbox(bb_template) for _ in range(3)]
    try:
        names = [b.name for b in boxes]
        assert len(set(names)) == 3
        assert all(DNS_LABEL.match(n) for n in names)
    finally:
        for b in boxes:
            client.delete_sandbox(b.name)


def test_create_without_waiting(client: SandboxClient, bb_template: str) -> None:
    """wait_for_ready=False answers provisioning at once; wait_for_sandbox then gets it ready."""
    name = f"nw-{uuid.uuid4().hex[:6]}"
    sb = client.create_sandbox(bb_template, name=name, wait_for_ready=False)
    try:
        assert sb.status == "provisioning"
        with pytest.raises(SandboxNotReadyError):
            sb.run("echo hi")
        ready = client.wait_for_sandbox(name, timeout=30, poll_interval=0.05)
        assert ready.status == "ready"
        assert client.get_sandbox_status(name).status == "ready"
        assert ready.run("echo hi").stdout == "hi\n"
    finally:
        client.delete_sandbox(name)


def test_create_unknown_template(client: SandboxClient) -> None:
    """An unknown template answers 404, and no sandbox is created."""
    before = {s.name for s in client.list_sandboxes()}
    with pytest.raises(ResourceNotFoundError) as info:
        client.create_sandbox("no-such-template", name="orphan-x")
    assert "no-such-template" in str(info.value)
    assert {s.name for s in client.list_sandboxes()} == before


def test_create_timeout(client: SandboxClient, bb_template: str, server: Server) -> None:
    """Not ready within ``timeout`` (0 s here) answers 408 → ResourceTimeoutError; it goes on."""
    name = f"slow-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ResourceTimeoutError) as info:
        client.create_sandbox(bb_template, name=name, timeout=0)
    assert info.value.status == 408
    assert "not ready after 0s" in str(info.value)
    # The sandbox keeps provisioning and becomes usable.
    assert client.wait_for_sandbox(name, timeout=30, poll_interval=0.05).status == "ready"
    client.delete_sandbox(name)


def test_image_missing_fails_with_imagepull(client: SandboxClient) -> None:
    """A template whose image is not in the store fails the create with 422 ImagePull."""
    tpl = f"missing-{uuid.uuid4().hex[:6]}"
    client.create_template(tpl, "local/not-imported:1")
    try:
        with pytest.raises(SandboxClientError) as info:
            client.create_sandbox(tpl, name=tpl)
        assert info.value.status == 422
        assert "ImagePull" in str(info.value)
        assert "hutch image import" in str(info.value)
        with pytest.raises(ResourceNotFoundError):
            client.get_sandbox(tpl)  # nothing half created
    finally:
        client.delete_template(tpl)


def test_failed_provision_without_wait_reports_failed(client: SandboxClient) -> None:
    """With wait_for_ready=False a failed create shows status failed with a message."""
    tpl = f"missing-{uuid.uuid4().hex[:6]}"
    client.create_template(tpl, "local/not-imported:2")
    try:
        client.create_sandbox(tpl, name=tpl, wait_for_ready=False)
        assert wait_until(lambda: client.get_sandbox_status(tpl).status == "failed", 30)
        status = client.get_sandbox_status(tpl)
        assert "not-imported" in (status.status_message or "")
        client.delete_sandbox(tpl)
    finally:
        client.delete_template(tpl)


def test_get_list_update_delete(client: SandboxClient, bb_template: str) -> None:
    """get/list find a sandbox; update renames it and sets TTLs; delete removes it."""
    name = f"life-{uuid.uuid4().hex[:6]}"
    sb = client.create_sandbox(bb_template, name=name)
    assert client.get_sandbox(name).id == sb.id
    assert name in [s.name for s in client.list_sandboxes()]
    updated = client.update_sandbox(name, new_name=name + "-b", ttl_seconds=600)
    assert updated.name == name + "-b" and updated.ttl_seconds == 600
    assert updated.expires_at is not None
    with pytest.raises(ResourceNotFoundError):
        client.get_sandbox(name)
    # The data plane follows the sandbox across the rename (dataplane_url uses the id).
    assert updated.run("hostname").exit_code == 0
    client.delete_sandbox(name + "-b")
    with pytest.raises(ResourceNotFoundError) as info:
        client.get_sandbox(name + "-b")
    assert info.value.resource_type == "sandbox"
    with pytest.raises(ResourceNotFoundError):
        client.delete_sandbox(name + "-b")


def test_duplicate_and_conflicting_names(client: SandboxClient, bb_template: str) -> None:
    """A duplicate name answers 409; renaming onto a taken name is a name conflict."""
    a, b = f"dup-{uuid.uuid4().hex[:6]}", f"dup-{uuid.uuid4().hex[:6]}"
    client.create_sandbox(bb_template, name=a)
    client.create_sandbox(bb_template, name=b)
    try:
        with pytest.raises(SandboxClientError) as info:
            client.create_sandbox(bb_template, name=a)
        assert info.value.status == 409
        with pytest.raises(ResourceNameConflictError):
            client.update_sandbox(a, new_name=b)
    finally:
        client.delete_sandbox(a)
        client.delete_sandbox(b)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"template_name": "bb", "name": "UPPER"}, "not a valid name"),
        ({"template_name": "bb", "name": "a.b"}, "not a valid name"),
        ({"template_name": "bb", "surprise": 1}, "unknown field"),
        ({"template_name": "bb", "timeout": "soon"}, "timeout"),
        ({"template_name": "bb", "timeout": -5}, "timeout"),
        ({"template_name": "bb", "ttl_seconds": -1}, "ttl_seconds"),
        ({"template_name": "bb", "wait_for_ready": "yes"}, "wait_for_ready"),
        ({}, "template_name"),
    ],
)
def test_create_bad_input(
    server: Server, bb_template: str, body: dict[str, object], needle: str
) -> None:
    """Invalid create bodies get 422 in the envelope and create nothing."""
    with server.http() as http:
        before = http.get("/v2/sandboxes/boxes").json()["sandboxes"]
        r = http.post("/v2/sandboxes/boxes", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["detail"]["error"] == "ValidationError"
        assert needle in r.json()["detail"]["message"]
        assert http.get("/v2/sandboxes/boxes").json()["sandboxes"] == before


def test_auth_required(server: Server) -> None:
    """Missing or wrong API keys answer 401 on the control plane; the server keeps serving."""
    with server.http(key="") as http:
        r = http.get("/v2/sandboxes/templates", headers={"X-Api-Key": ""})
        assert r.status_code == 401
        assert "X-Api-Key" in r.json()["detail"]["message"]
    with server.http(key="wrong") as http:
        r = http.get("/v2/sandboxes/boxes")
        assert r.status_code == 401
        assert r.json()["detail"]["error"] == "Unauthorized"
    with server.client(api_key="wrong") as bad, pytest.raises(SandboxAuthenticationError):
        bad.list_templates()
    assert server.alive()


def test_context_manager_deletes(client: SandboxClient, bb_template: str, server: Server) -> None:
    """client.sandbox() deletes its sandbox, and the container, on exit."""
    with client.sandbox(bb_template) as sb:
        sandbox_id = sb.id
        assert sandbox_id in server.runc_ids()
    with pytest.raises(ResourceNotFoundError):
        client.get_sandbox(sb.name)
    assert sandbox_id not in server.runc_ids()
