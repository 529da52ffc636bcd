"""``hutch serve --database-url postgresql+asyncpg://…``: a real server on a throwaway
PostgreSQL cluster creates, runs, lists and deletes sandboxes, filters snapshots and registries
by name case-insensitively, enforces quotas, keeps its rows across a restart, and shares the
database with a second server without touching that one's sandboxes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hutch import QuotaExceededError
from tests.conftest import (
    HUTCH,
    TIME_SCALE,
    Server,
    data_dir_with_busybox,
    remove_all_sandboxes,
    start_server,
    stop_server,
    wait_until,
)
from tests.postgres import Cluster
from tests.server.test_snapshots import build

pytestmark = pytest.mark.root
API = "/api/v2/sandboxes"


@pytest.fixture(scope="module")
def pg_server(
    tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path, postgres_cluster: Cluster
) -> Iterator[tuple[Server, str]]:
    """A server whose store is a fresh PostgreSQL database (and its URL)."""
    url = postgres_cluster.createdb()
    data = data_dir_with_busybox(tmp_path_factory.mktemp("pg"), busybox_tar)
    srv = start_server(data, "--database-url", url)
    try:
        yield srv, url
    finally:
        stop_server(srv)
        remove_all_sandboxes(data)


@pytest.fixture
def http(pg_server: tuple[Server, str]) -> Iterator[httpx.Client]:
    with pg_server[0].http() as c:
        yield c


def test_sandboxes_are_created_run_listed_and_deleted(pg_server: tuple[Server, str]) -> None:
    """The SDK's whole sandbox round trip works with PostgreSQL as the store."""
    server, _ = pg_server
    with server.client() as client:
        client.create_template("pg-bb", "local/busybox", cpu="250m", memory="128Mi")
        with client.sandbox("pg-bb") as sb:
            result = sb.run("echo hello")
            assert (result.stdout, result.exit_code) == ("hello\n", 0)
            assert sb.name in {s.name for s in client.list_sandboxes()}
            name = sb.name
        assert name not in {s.name for s in client.list_sandboxes()}


def test_name_filters_are_case_insensitive(http: httpx.Client) -> None:
    """``name_contains`` on snapshots and registries ignores case on PostgreSQL too (where
    LIKE is case-sensitive), and its wildcards stay literal."""
    for name in ("pg-snap-a", "pg-snap-b", "other"):
        assert build(http, name)["status"] == "ready"
    got = http.get(f"{API}/snapshots", params={"name_contains": "PG-SNAP"}).json()["snapshots"]
    assert sorted(s["name"] for s in got) == ["pg-snap-a", "pg-snap-b"]
    assert http.get(f"{API}/snapshots", params={"name_contains": "%"}).json()["snapshots"] == []
    body = {"url": "https://ghcr.io/", "username": "u", "password": "p"}
    for name in ("team-reg", "team-other", "elsewhere"):
        assert http.post(f"{API}/registries", json={**body, "name": name}).status_code == 201
    items = http.get(f"{API}/registries", params={"name_contains": "TEAM"}).json()["items"]
    assert sorted(x["name"] for x in items) == ["team-other", "team-reg"]


def test_rows_survive_a_restart_on_the_same_database(
    tmp_path: Path, busybox_tar: Path, postgres_cluster: Cluster
) -> None:
    """A server started again on the same PostgreSQL database (migrating it again: nothing to
    do) sees the templates the first run made."""
    url = postgres_cluster.createdb()
    data = data_dir_with_busybox(tmp_path, busybox_tar)
    first = start_server(data, "--database-url", url)
    try:
        with first.client() as client:
            client.create_template("pg-kept", "local/busybox", cpu="250m", memory="128Mi")
    finally:
        stop_server(first)
    again = start_server(data, "--database-url", url)
    try:
        with again.client() as client:
            assert "pg-kept" in {t.name for t in client.list_templates()}
    finally:
        stop_server(again)


def test_keys_and_quotas_from_the_cli_reach_a_postgresql_server(
    pg_server: tuple[Server, str],
) -> None:
    """``hutch keys create`` / ``workspaces quota --database-url`` write to the server's
    PostgreSQL; the key is accepted and a memory quota (summed in SQL) trips at its number."""
    server, url = pg_server

    def cli(*args: str) -> str:
        return subprocess.run(
            [*HUTCH, *args, "--data-dir", str(server.data_dir), "--database-url", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    key = cli("keys", "create", "--workspace", "pg-tenant").strip()
    assert wait_until(lambda: _accepted(server, key), timeout=5 * TIME_SCALE)
    cli("workspaces", "quota", "pg-tenant", "--memory", "6Gi")
    with server.client(api_key=key, max_retries=0) as client:
        client.create_template("pg-big", "local/busybox", cpu="250m", memory="4Gi")
        first = client.create_sandbox(template_name="pg-big")
        try:
            with pytest.raises(QuotaExceededError) as exc:
                client.create_sandbox(template_name="pg-big")
            assert exc.value.quota_type == "memory", exc.value
        finally:
            client.delete_sandbox(first.name)
    assert "pg-tenant  sandboxes 0/-  cpu -  memory 6144Mi" in cli("workspaces", "list")


def _accepted(server: Server, key: str) -> bool:
    with server.http(key) as http:
        return http.get(f"{API}/boxes").status_code == 200


def test_two_servers_on_one_database_leave_each_others_sandboxes_alone(
    tmp_path: Path, busybox_tar: Path, postgres_cluster: Cluster
) -> None:
    """Two servers (own data dirs and ports) share one PostgreSQL database: starting and
    restarting either reconciles only the sandboxes it runs, so each one's sandbox stays
    ready and runs commands (a start-up of the other would otherwise record it stopped); a
    server refuses (421) to stop, delete, capture or run commands in the other's sandbox."""
    url = postgres_cluster.createdb()
    data = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        data.append(data_dir_with_busybox(tmp_path / name, busybox_tar))
    servers: list[Server] = []
    try:
        servers.append(start_server(data[0], "--database-url", url))
        with servers[0].client() as client:
            client.create_template("two", "local/busybox", cpu="250m", memory="128Mi")
            client.create_sandbox(template_name="two", name="on-a")
        servers.append(start_server(data[1], "--database-url", url))
        with servers[1].client() as client:
            client.create_sandbox(template_name="two", name="on-b")
        stop_server(servers[0])  # a restart of A reconciles again, with B's row there
        servers[0] = start_server(data[0], "--database-url", url)
        mine = list(zip(servers, ("on-a", "on-b"), strict=True))
        for server, name in mine:
            with server.client() as client:
                assert {s.name: s.status for s in client.list_sandboxes()} == {
                    "on-a": "ready",
                    "on-b": "ready",
                }
                result = client.get_sandbox(name).run("echo alive")
                assert (result.stdout, result.exit_code) == ("alive\n", 0)
        # Through B, A's sandbox is listed but not acted on: 421 naming the other server, and
        # its record and container are untouched.
        with servers[1].http() as http:
            on_a = http.get("/api/v2/sandboxes/boxes/on-a").json()
            for method, path, body in (
                ("POST", "/api/v2/sandboxes/boxes/on-a/stop", None),
                ("DELETE", "/api/v2/sandboxes/boxes/on-a", None),
                ("POST", "/api/v2/sandboxes/boxes/on-a/snapshot", {"name": "nope"}),
                ("POST", f"/dp/{on_a['id']}/execute", {"command": "echo via-b"}),
            ):
                r = http.request(method, path, json=body)
                assert r.status_code == 421, (path, r.text)
                assert "another hutch server" in r.json()["detail"]["message"]
        with servers[0].client() as client:
            assert client.get_sandbox("on-a").status == "ready"
            assert client.get_sandbox("on-a").run("echo still").stdout == "still\n"
        for server, name in mine:
            with server.client() as client:
                client.delete_sandbox(name)
    finally:
        for server in servers:
            stop_server(server)
        for d in data:
            remove_all_sandboxes(d)
