"""Templates naming registry images, over a real server and a real local registry: Docker-style
names through a registries.conf mirror, digests, multi-arch indexes, server and per-template
credentials, ImagePull failures, and hostile references."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hutch import SandboxClient, SandboxClientError
from hutch.runtime.images._layouts import host_arch
from tests.conftest import HUTCH, Server, start_server, stop_server, wait_until
from tests.registry import PASSWORD, USER, Registry, auth_file, mirror_conf, multi_arch_layout

pytestmark = pytest.mark.root


@dataclass
class Setup:
    server: Server
    registry: Registry
    auth_registry: Registry
    busybox_digest: str


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
    registry: Registry,
    auth_registry: Registry,
    busybox_tar: Path,
    python_tar: Path,
) -> Iterator[Setup]:
    """A server whose docker.io pulls go to the local registry (a mirror), and whose own auth
    file holds *wrong* credentials for the auth registry (templates must bring the right ones)."""
    work = tmp_path_factory.mktemp("registry-server")
    registry.push(f"tarball:{python_tar}", "library/python:3.12-slim")
    digest = registry.push(f"tarball:{busybox_tar}", "srv/busybox:1")
    layout = work / "multi"
    multi_arch_layout(layout, busybox_tar, ("arm64", "amd64"))
    registry.push(f"oci:{layout}:multi", "srv/multi:1", all_platforms=True)
    auth_registry.push(f"tarball:{busybox_tar}", "srv/private:1")
    data = work / "data"
    data.mkdir()
    server = start_server(
        data,
        "--registries-conf",
        str(mirror_conf(work / "registries.conf", registry.host)),
        "--registry-auth",
        str(auth_file(work / "auth.json", auth_registry.host, USER, "not-the-password")),
        "--insecure-registry",
        registry.host,
        "--insecure-registry",
        auth_registry.host,
    )
    try:
        yield Setup(server, registry, auth_registry, digest)
    finally:
        stop_server(server)
        from tests.conftest import remove_all_sandboxes

        remove_all_sandboxes(data)


@pytest.fixture(scope="module")
def client(setup: Setup) -> Iterator[SandboxClient]:
    with setup.server.client() as c:
        yield c


def template(client: SandboxClient, image: str) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.create_template(name, image, cpu="500m", memory="256Mi")
    return name


def create_error(client: SandboxClient, tpl: str) -> SandboxClientError:
    with pytest.raises(SandboxClientError) as info:
        client.create_sandbox(tpl, name=tpl, timeout=60)
    assert info.value.status == 422
    assert getattr(info.value, "error_type", None) == "ImagePull"
    return info.value


def test_python_template_resolves_through_the_mirror(client: SandboxClient, setup: Setup) -> None:
    """'python:3.12-slim' is docker.io/library/python:3.12-slim, pulled through the mirror; the
    status message shows the pull while the sandbox provisions; python runs."""
    tpl = template(client, "python:3.12-slim")
    name = f"py-{uuid.uuid4().hex[:6]}"
    client.create_sandbox(tpl, name=name, wait_for_ready=False)
    seen: set[str] = set()

    def ready() -> bool:
        status = client.get_sandbox_status(name)
        if status.status_message:
            seen.add(status.status_message)
        return status.status != "provisioning"

    assert wait_until(ready, 120, interval=0.01)
    assert client.get_sandbox_status(name).status == "ready", seen
    sb = client.get_sandbox(name)
    try:
        assert sb.run("python3 -c 'print(2+2)'").stdout == "4\n"
    finally:
        client.delete_sandbox(name)
    assert any("docker.io/library/python:3.12-slim" in m for m in seen), seen
    assert setup.registry.manifest_requests("library/python") >= 1
    listing = image_cli(setup.server, "list")
    assert "docker.io/library/python:3.12-slim" in listing
    # The short name finds the pulled image for removal too; its layer is freed.
    layers = setup.server.data_dir / "images" / "layers" / "sha256"
    before = len(list(layers.iterdir()))
    removed = image_cli(setup.server, "rm", "python:3.12-slim")
    assert removed.strip() == "removed docker.io/library/python:3.12-slim"
    assert "python" not in image_cli(setup.server, "list")
    assert len(list(layers.iterdir())) == before - 2  # the layer directory and its metadata


def image_cli(server: Server, *args: str) -> str:
    import subprocess

    proc = subprocess.run(
        [*HUTCH, "image", *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def test_digest_and_multi_arch_templates(client: SandboxClient, setup: Setup) -> None:
    """A template by digest and one naming a multi-arch index both give running sandboxes; the
    index yields the host's architecture."""
    host = setup.registry.host
    by_digest = template(client, f"{host}/srv/busybox@{setup.busybox_digest}")
    with client.sandbox(by_digest) as sb:
        assert sb.run("echo pulled").stdout == "pulled\n"
    multi = template(client, f"{host}/srv/multi:1")
    with client.sandbox(multi) as sb:
        assert sb.run("cat /arch").stdout == host_arch()


def test_unknown_image_is_imagepull_422(client: SandboxClient, setup: Setup) -> None:
    """A template naming an image the registry lacks: the sandbox create answers 422 ImagePull
    saying so, and leaves no sandbox behind."""
    tpl = template(client, f"{setup.registry.host}/srv/nothing-here:1")
    exc = create_error(client, tpl)
    assert "no such image" in str(exc)
    assert tpl not in {s.name for s in client.list_sandboxes()}
    unreachable = template(client, "127.0.0.1:1/srv/busybox:1")
    assert "unreachable" in str(create_error(client, unreachable))


def test_registry_credentials(client: SandboxClient, setup: Setup) -> None:
    """The server's auth file is used (its wrong password is refused, saying so); a template's
    registry_username/registry_password override it; they are never echoed back."""
    image = f"{setup.auth_registry.host}/srv/private:1"
    plain = template(client, image)
    message = str(create_error(client, plain))
    assert "refused the credentials (the server's --registry-auth file" in message
    base = "/v2/sandboxes/templates"
    with setup.server.http() as http:
        wrong = f"t-{uuid.uuid4().hex[:8]}"
        body = {
            "name": wrong,
            "image": image,
            "registry_username": USER,
            "registry_password": "nope",
        }
        assert http.post(base, json=body).status_code == 201
        message = str(create_error(client, wrong))
        assert "refused the credentials (the template's registry credentials" in message
        good = f"t-{uuid.uuid4().hex[:8]}"
        body = {
            "name": good,
            "image": image,
            "registry_username": USER,
            "registry_password": PASSWORD,
        }
        answer = http.post(base, json=body)
        assert answer.status_code == 201
        assert PASSWORD not in answer.text
        assert PASSWORD not in http.get(f"{base}/{good}").text
        with client.sandbox(good) as sb:
            assert sb.run("echo in").stdout == "in\n"
        creds = setup.server.data_dir / "registry-auth"
        assert oct(creds.stat().st_mode & 0o777) == "0o700"
        client.delete_template(good)
        assert answer.json()["id"] + ".json" not in {p.name for p in creds.iterdir()}
        half = {"name": f"t-{uuid.uuid4().hex[:8]}", "image": image, "registry_username": USER}
        refused = http.post(base, json=half)
        assert refused.status_code == 422
        assert "registry_password" in refused.json()["detail"]["message"]


@pytest.mark.parametrize(
    "image",
    [
        "oci:/etc",
        "dir:/root",
        "docker-archive:/tmp/x.tar",
        "docker://evil.example/x",
        "--authfile=/etc/shadow",
        "-v",
        "../../etc/passwd",
        "python:3.12 --debug",
    ],
)
def test_hostile_references_are_refused(setup: Setup, image: str) -> None:
    """A reference that is a transport, an option or a path is a 422 ValidationError at
    template creation; the server keeps serving."""
    with setup.server.http() as http:
        answer = http.post("/v2/sandboxes/templates", json={"name": "hostile", "image": image})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail["error"] == "ValidationError"
    assert "invalid image name" in detail["message"]
    assert setup.server.alive()
