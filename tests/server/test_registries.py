"""Private registries of a workspace (``/registries``) against a real htpasswd registry: CRUD,
passwords never answered, a snapshot built with ``registry_id`` pulls with them, and they are
never sent to another host."""

from __future__ import annotations

import time
import uuid
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
from tests.registry import PASSWORD, USER, Registry

pytestmark = pytest.mark.root
API = "/api/v2/sandboxes"


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path, auth_registry: Registry
) -> Iterator[Server]:
    for tag in ("1", "2"):
        auth_registry.push(f"tarball:{busybox_tar}", f"team/private:{tag}")
    data = data_dir_with_busybox(tmp_path_factory.mktemp("registries"), busybox_tar)
    s = start_server(data, "--insecure-registry", auth_registry.host)
    try:
        yield s
    finally:
        stop_server(s)
        remove_all_sandboxes(data)


@pytest.fixture
def http(srv: Server) -> Iterator[httpx.Client]:
    with srv.http() as c:
        c.timeout = httpx.Timeout(60)
        yield c


def snapshot(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post(f"{API}/snapshots", json={"name": f"s-{uuid.uuid4().hex[:6]}", **body})
    assert r.status_code == 201, r.text
    snap: dict[str, Any] = r.json()
    deadline = time.monotonic() + 60
    while snap["status"] == "building" and time.monotonic() < deadline:
        time.sleep(0.2)
        snap = http.get(f"{API}/snapshots/{snap['id']}").json()
    return snap


def test_crud_never_answers_the_password(http: httpx.Client) -> None:
    """Create, get, list (name_contains, pages), update and delete; no answer holds the
    password; duplicates 409; unknown 404; AWS roles 501."""
    body = {"name": "crud", "url": "https://ghcr.io/", "username": "u", "password": "s3cret!"}
    r = http.post(f"{API}/registries", json=body)
    assert r.status_code == 201, r.text
    made = r.json()
    assert (made["name"], made["url"], made["username"]) == ("crud", "ghcr.io", "u")
    assert http.post(f"{API}/registries", json=body).status_code == 409
    http.post(f"{API}/registries", json={**body, "name": "crud-two"})
    page = http.get(f"{API}/registries", params={"name_contains": "CRUD", "page_size": 1}).json()
    assert [x["name"] for x in page["items"]] == ["crud-two"] and page["next_cursor"] == "1"
    rest = http.get(f"{API}/registries", params={"cursor": page["next_cursor"]}).json()
    assert [x["name"] for x in rest["items"]] == ["crud"] and rest["next_cursor"] is None
    r = http.patch(f"{API}/registries/crud", json={"username": "v", "url": "quay.io"})
    assert r.status_code == 200 and (r.json()["username"], r.json()["url"]) == ("v", "quay.io")
    for resp in (http.get(f"{API}/registries/crud"), http.get(f"{API}/registries")):
        assert "s3cret" not in resp.text
    assert http.delete(f"{API}/registries/crud").status_code == 204
    assert http.delete(f"{API}/registries/crud-two").status_code == 204
    assert http.get(f"{API}/registries/crud").status_code == 404
    aws = http.post(
        f"{API}/registries", json={"name": "aws", "url": "x.io", "auth_type": "AWS_ROLE"}
    )
    assert aws.status_code == 501 and "AWS role" in aws.json()["detail"]["message"]
    bad = http.post(f"{API}/registries", json={**body, "name": "b", "url": "a b/c"})
    assert bad.status_code == 422


def test_snapshot_with_registry_id_pulls_with_its_credentials(
    http: httpx.Client, auth_registry: Registry
) -> None:
    """Without credentials the private image fails to build, saying why; with a registry of
    the right password it builds and boots; a wrong password fails; an image on another host
    is refused before any pull (credentials never leave for another registry)."""
    image = f"{auth_registry.host}/team/private:1"
    plain = snapshot(http, docker_image=image)
    assert plain["status"] == "failed" and plain["status_message"]
    good = http.post(
        f"{API}/registries",
        json={"name": "private", "url": auth_registry.host, "username": USER, "password": PASSWORD},
    ).json()
    snap = snapshot(http, docker_image=image, registry_id=good["id"], tag="v1")
    assert snap["status"] == "ready", snap
    assert snap["registry_id"] == good["id"] and snap["tags"] == ["v1"]
    box = http.post(f"{API}/boxes", json={"snapshot_id": snap["id"]}).json()
    out = http.post(f"/dp/{box['id']}/execute", json={"command": "echo pulled"}).json()
    assert out["stdout"] == "pulled\n"
    http.delete(f"{API}/boxes/{box['name']}")
    wrong = http.post(
        f"{API}/registries",
        json={"name": "wrong", "url": auth_registry.host, "username": USER, "password": "nope"},
    ).json()
    refused = snapshot(
        http, docker_image=f"{auth_registry.host}/team/private:2", registry_id=wrong["id"]
    )
    assert refused["status"] == "failed" and refused["status_message"]
    other = http.post(
        f"{API}/snapshots",
        json={"name": "elsewhere", "docker_image": "example.org/x:1", "registry_id": wrong["id"]},
    )
    assert (
        other.status_code == 422 and "only sent to that host" in other.json()["detail"]["message"]
    )
