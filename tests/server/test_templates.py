"""Templates over the real server: CRUD, 404/409 semantics, bad input."""

from __future__ import annotations

import uuid

import pytest

from hutch import (
    ResourceInUseError,
    ResourceNameConflictError,
    ResourceNotFoundError,
    SandboxClient,
    SandboxClientError,
    ValidationError,
)
from tests.conftest import Server

pytestmark = pytest.mark.root


def _name(prefix: str = "tpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_template_crud(client: SandboxClient) -> None:
    """create → get → list → rename → delete, each answering the template's JSON."""
    name = _name()
    created = client.create_template(name, "local/busybox", cpu="250m", memory="128Mi")
    assert created.name == name
    assert created.image == "local/busybox:latest"
    assert created.resources.cpu == "250m" and created.resources.memory == "128Mi"
    assert created.id and created.created_at
    assert client.get_template(name).id == created.id
    assert name in [t.name for t in client.list_templates()]
    renamed = client.update_template(name, new_name=name + "-b")
    assert renamed.name == name + "-b" and renamed.id == created.id
    with pytest.raises(ResourceNotFoundError):
        client.get_template(name)
    client.delete_template(name + "-b")
    assert name + "-b" not in [t.name for t in client.list_templates()]


def test_template_not_found(client: SandboxClient) -> None:
    """get, update and delete of an unknown template raise ResourceNotFoundError(template)."""
    for call in (
        lambda: client.get_template("nope-x"),
        lambda: client.update_template("nope-x", new_name="nope-y"),
        lambda: client.delete_template("nope-x"),
    ):
        with pytest.raises(ResourceNotFoundError) as info:
            call()
        assert info.value.resource_type == "template"
        assert "nope-x" in str(info.value)


def test_template_duplicate_and_rename_conflict(client: SandboxClient) -> None:
    """A duplicate create answers 409; renaming onto an existing name is a name conflict."""
    a, b = _name(), _name()
    client.create_template(a, "local/busybox")
    client.create_template(b, "local/busybox")
    try:
        with pytest.raises(SandboxClientError) as info:
            client.create_template(a, "local/busybox")
        assert info.value.status == 409 and "already exists" in str(info.value)
        with pytest.raises(ResourceNameConflictError):
            client.update_template(a, new_name=b)
    finally:
        client.delete_template(a)
        client.delete_template(b)


def test_template_in_use(client: SandboxClient) -> None:
    """Deleting a template that a sandbox uses is refused with ResourceInUseError."""
    name = _name()
    client.create_template(name, "local/busybox")
    with client.sandbox(name) as sb:
        with pytest.raises(ResourceInUseError) as info:
            client.delete_template(name)
        assert sb.name in str(info.value)
    client.delete_template(name)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"name": "Not_A_Label", "image": "local/busybox"}, "not a valid name"),
        ({"name": "-x", "image": "local/busybox"}, "not a valid name"),
        ({"name": "a" * 64, "image": "local/busybox"}, "not a valid name"),
        ({"name": "ok-name", "image": "local/busybox", "colour": "red"}, "unknown field"),
        ({"name": 5, "image": "local/busybox"}, "name"),
        ({"name": "ok-name"}, "image"),
        ({"name": "ok-name", "image": "bad image name"}, "image"),
        ({"name": "ok-name", "image": "x", "resources": {"memory": "1Ti"}}, "exceeds"),
        ({"name": "ok-name", "image": "x", "resources": {"cpu": "-1"}}, "cpu"),
        ({"name": "ok-name", "image": "x", "resources": {"cpu": "64"}}, "exceeds"),
        ({"name": "ok-name", "image": "x", "resources": {"memory": "lots"}}, "memory"),
        ({"name": "ok-name", "image": "x", "resources": {"storage": "1Q"}}, "storage"),
    ],
)
def test_template_bad_input(
    server: Server, client: SandboxClient, body: dict[str, object], needle: str
) -> None:
    """Invalid template bodies get a 422 envelope naming the problem; nothing is created."""
    with server.http() as http:
        r = http.post("/v2/sandboxes/templates", json=body)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert detail["error"] == "ValidationError"
        assert needle in detail["message"]
        assert "ok-name" not in [
            t["name"] for t in http.get("/v2/sandboxes/templates").json()["templates"]
        ]
    with pytest.raises(ValidationError):
        client.create_template("x", "local/busybox", memory="1Ti")


def test_not_json_and_unknown_route(server: Server) -> None:
    """A body that is not JSON and an unknown path both answer in the error envelope."""
    with server.http() as http:
        r = http.post(
            "/v2/sandboxes/templates",
            content=b"{nope",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422
        assert r.json()["detail"]["error"] == "ValidationError"
        r = http.get("/v2/sandboxes/nothing-here")
        assert r.status_code == 404
        assert r.json()["detail"]["message"].startswith("No such endpoint")
    assert server.alive()


def test_both_prefixes_serve_the_same_api(server: Server, client: SandboxClient) -> None:
    """/v2/sandboxes and /api/v2/sandboxes are the same API (template-era and 0.15 SDKs)."""
    name = _name()
    client.create_template(name, "local/busybox")
    try:
        with server.http() as http:
            for prefix in ("/v2/sandboxes", "/api/v2/sandboxes", "/api/v1/v2/sandboxes"):
                assert http.get(f"{prefix}/templates/{name}").json()["name"] == name
    finally:
        client.delete_template(name)
