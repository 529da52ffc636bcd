"""Shared fixtures: locally built images and a real ``hutch serve`` on loopback.

Tests marked ``root`` run real runc containers; CI runs as root. Without root they are reported
as skipped with that reason, never silently dropped.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hutch import SandboxClient
from tests.postgres import Cluster, start_cluster
from tests.registry import Registry, start_registry

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("HUTCH_CACHE_DIR", "/var/cache/hutch"))
#: Multiply every timing constant in tests by this on slow machines.
TIME_SCALE = float(os.environ.get("HUTCH_TEST_TIME_SCALE", "1"))
API_KEY = "test-key-0123456789"
HUTCH = [sys.executable, "-m", "hutch"]
OUTPUT = REPO / "test-output"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (runc, mounts, cgroups); CI runs as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def build_image(which: str) -> Path:
    subprocess.run(
        [str(REPO / "scripts/images.sh"), which],
        check=True,
        env={**os.environ, "HUTCH_CACHE_DIR": str(CACHE)},
    )
    return (
        CACHE
        / {
            "busybox": "busybox.tar",
            "python": "debian-python-3.11.tar",
            "postgres": "debian-postgres-redis.tar",
        }[which]
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true or ``timeout`` (scaled by HUTCH_TEST_TIME_SCALE) passes."""
    deadline = time.monotonic() + timeout * TIME_SCALE
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@dataclass
class Server:
    url: str
    key: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"{self.url}/v2/sandboxes"

    def client(self, **kw: object) -> SandboxClient:
        return SandboxClient(api_endpoint=self.base, api_key=kw.pop("api_key", self.key), **kw)  # type: ignore[arg-type]

    def http(self, key: str | None = None) -> httpx.Client:
        headers = {"X-Api-Key": key if key is not None else self.key}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def import_image(self, name: str, path: Path) -> None:
        subprocess.run(
            [*HUTCH, "image", "import", name, str(path), "--data-dir", str(self.data_dir)],
            check=True,
            capture_output=True,
        )

    def runc_ids(self) -> set[str]:
        out = subprocess.run(
            ["runc", "--root", str(self.data_dir / "runc"), "list", "-q"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return set(out.split())

    @property
    def service_url(self) -> str:
        """Base URL of the server's service-URL listener (its own port, printed at start)."""
        for line in self.log.read_text(errors="replace").splitlines()[::-1]:
            if line.startswith("hutch: service URLs are served on "):
                return "http://" + line.rsplit(" ", 1)[-1]
        raise AssertionError("the server did not say where service URLs are served")

    def alive(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def data_dir_with_busybox(parent: Path, busybox_tar: Path) -> Path:
    """A fresh server data dir ``parent/data`` whose image store holds ``local/busybox``."""
    data = parent / "data"
    data.mkdir()
    subprocess.run(
        [*HUTCH, "image", "import", "local/busybox", str(busybox_tar), "--data-dir", str(data)],
        check=True,
        capture_output=True,
    )
    return data


def start_server(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    log = data_dir.parent / f"{data_dir.name}-server.log"
    with log.open("ab") as out:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            [*HUTCH, "serve", "--port", str(port), "--data-dir", str(data_dir), *extra],
            env={**os.environ, "HUTCH_API_KEY": API_KEY, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", API_KEY, data_dir, proc, log)
    if not wait_until(lambda: server.alive() or proc.poll() is not None, 30):
        proc.kill()
        raise RuntimeError(f"hutch serve did not start; log: {log.read_text()}")
    if proc.poll() is not None:
        raise RuntimeError(f"hutch serve exited; log: {log.read_text()}")
    return server


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


def remove_all_sandboxes(data_dir: Path) -> None:
    """Tear down every container a test server left (servers keep sandboxes across restarts)."""
    from hutch.runtime.runc import RuncRuntime

    async def _clean() -> None:
        rt = RuncRuntime(data_dir)
        for sandbox_id in await rt.list_ids():
            await rt.delete(sandbox_id)
        await rt.aclose()

    asyncio.run(_clean())


@pytest.fixture(scope="session")
def busybox_tar() -> Path:
    return build_image("busybox")


@pytest.fixture(scope="session")
def python_tar() -> Path:
    return build_image("python")


@pytest.fixture(scope="session")
def postgres_tar() -> Path:
    """Debian bookworm with PostgreSQL 15 and Redis, built once with mmdebstrap."""
    return build_image("postgres")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Server]:
    """One real server for the session, with ``local/busybox`` imported."""
    if os.geteuid() != 0:
        pytest.skip("needs root (runc, mounts, cgroups); CI runs as root")
    data = data_dir_with_busybox(tmp_path_factory.mktemp("hutch"), busybox_tar)
    srv = start_server(data)
    try:
        yield srv
    finally:
        stop_server(srv)
        remove_all_sandboxes(data)


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[SandboxClient]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="session")
def bb_template(client: SandboxClient) -> str:
    """A template named ``bb`` on the busybox image (256Mi, 500m)."""
    client.create_template("bb", "local/busybox", cpu="500m", memory="256Mi")
    return "bb"


@pytest.fixture(scope="session")
def py_template(server: Server, client: SandboxClient, python_tar: Path) -> str:
    """A template ``py-shared`` on the Debian bookworm image with python3."""
    server.import_image("local/python:3.11", python_tar)
    client.create_template(name="py-shared", image="local/python:3.11")
    return "py-shared"


@pytest.fixture
def sandbox(client: SandboxClient, bb_template: str) -> Iterator[object]:
    """A fresh ready busybox sandbox, deleted afterwards."""
    with client.sandbox(bb_template) as sb:
        yield sb


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real OCI registry (Debian's docker-registry) on loopback, plain http, no auth."""
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Like ``registry``, with htpasswd (bcrypt) authentication: user ``hutch``."""
    reg = start_registry(tmp_path_factory.mktemp("auth-registry"), auth=True)
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster for the session (Debian's binaries, a free port)."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: Cluster) -> str:
    """A ``postgresql+asyncpg://`` URL of a fresh empty database."""
    return postgres_cluster.createdb()
