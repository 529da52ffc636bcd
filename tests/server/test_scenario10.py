"""Scenario 10 of the SDK guide: PostgreSQL (and Redis) in a sandbox, reached through tunnels."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from hutch import CommandHandle, Sandbox, SandboxClient
from tests.conftest import Server, wait_until

pytestmark = pytest.mark.root

PASSWORD = "hutch-test"
POSTGRES = (
    "mkdir -p /run/postgresql && chown postgres:postgres /run/postgresql && "
    "exec su postgres -s /bin/sh -c '/usr/lib/postgresql/15/bin/postgres "
    "-D /var/lib/postgresql/15/main -c config_file=/etc/postgresql/15/main/postgresql.conf'"
)
REDIS = "exec redis-server --port 6379 --bind 127.0.0.1 --save '' --protected-mode no"


def _wait_for(handle: CommandHandle, needle: str) -> str:
    """Iterate a handle until its output contains ``needle``; returns what was seen."""
    seen = ""
    for chunk in handle:
        seen += chunk.data
        if needle in seen:
            return seen
    raise AssertionError(f"{needle!r} never appeared; output was {seen!r}")


@pytest.fixture(scope="module")
def pg_sandbox(server: Server, client: SandboxClient, postgres_tar: Path) -> Iterator[Sandbox]:
    server.import_image("local/postgres-redis:15", postgres_tar)
    name = f"pg-{uuid.uuid4().hex[:6]}"
    client.create_template(name, "local/postgres-redis:15", cpu="1", memory="512Mi")
    with client.sandbox(name) as sb:
        yield sb
    client.delete_template(name)


@pytest.fixture(scope="module")
def postgres(pg_sandbox: Sandbox) -> Iterator[CommandHandle]:
    """postgres started with timeout=0, wait=False; killed at the end."""
    handle = pg_sandbox.run(POSTGRES, timeout=0, wait=False)
    _wait_for(handle, "ready to accept connections")
    pg_sandbox.run(
        f'su postgres -s /bin/sh -c "psql -q -c \\"ALTER USER postgres PASSWORD \'{PASSWORD}\'\\""'
    )
    yield handle
    handle.kill()


def test_postgres_through_a_tunnel(pg_sandbox: Sandbox, postgres: CommandHandle) -> None:
    """A PostgreSQL client on this machine runs SELECT version() through sb.tunnel()."""
    with pg_sandbox.tunnel(remote_port=5432) as t:
        assert t.local_port > 0
        with psycopg.connect(
            host="127.0.0.1",
            port=t.local_port,
            user="postgres",
            password=PASSWORD,
            dbname="postgres",
            connect_timeout=10,
        ) as conn:
            version = conn.execute("SELECT version()").fetchone()
    assert version is not None and version[0].startswith("PostgreSQL 15")


def test_postgres_and_redis_at_once(pg_sandbox: Sandbox, postgres: CommandHandle) -> None:
    """Two tunnels (PostgreSQL 5432 and Redis 6379) are open and used at the same time."""
    redis_handle = pg_sandbox.run(REDIS, timeout=0, wait=False)
    try:
        _wait_for(redis_handle, "Ready to accept connections")
        with pg_sandbox.tunnel(remote_port=5432) as pg, pg_sandbox.tunnel(remote_port=6379) as rd:
            assert pg.local_port != rd.local_port
            r = redis.Redis(host="127.0.0.1", port=rd.local_port, socket_timeout=10)
            r.set("greeting", "hello from the sandbox")
            with psycopg.connect(
                host="127.0.0.1",
                port=pg.local_port,
                user="postgres",
                password=PASSWORD,
                dbname="postgres",
                connect_timeout=10,
            ) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS notes (body text)")
                conn.execute("INSERT INTO notes VALUES (%s)", (r.get("greeting").decode(),))
                rows = conn.execute("SELECT body FROM notes").fetchall()
            r.close()
        assert ("hello from the sandbox",) in rows
    finally:
        redis_handle.kill()


PROCS = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"


def test_kill_stops_the_server(pg_sandbox: Sandbox, postgres: CommandHandle) -> None:
    """After handle.kill() no PostgreSQL process is left in the sandbox (runs last)."""
    assert "bin/postgres" in pg_sandbox.run(PROCS).stdout
    postgres.kill()
    assert wait_until(lambda: "bin/postgres" not in pg_sandbox.run(PROCS).stdout, 10)
