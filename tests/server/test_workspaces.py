"""Workspaces: keys from ``hutch keys``, isolation between workspaces, quotas, revocation.

Keys are made with the real CLI against the running server's data dir; the server picks them up
without a restart.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from hutch import QuotaExceededError, ResourceNotFoundError, SandboxClient, SandboxClientError
from tests.conftest import HUTCH, TIME_SCALE, Server, wait_until

pytestmark = pytest.mark.root


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HUTCH, *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        check=True,
    )


@dataclass
class Tenant:
    workspace: str
    key: str
    client: SandboxClient


def _accepted(server: Server, key: str) -> bool:
    with server.http(key) as http:
        return http.get("/api/v2/sandboxes/boxes").status_code == 200


@pytest.fixture(scope="module")
def other(server: Server) -> Iterator[Tenant]:
    """A second workspace with a key of its own, made while the server runs."""
    workspace = f"ws-{secrets.token_hex(3)}"
    key = cli(server, "keys", "create", "--workspace", workspace, "--name", "tests").stdout.strip()
    assert wait_until(lambda: _accepted(server, key), timeout=5 * TIME_SCALE)
    with server.client(api_key=key, max_retries=0) as client:
        yield Tenant(workspace, key, client)


def test_keys_list_shows_ids_never_keys(server: Server, other: Tenant) -> None:
    out = cli(server, "keys", "list", "--workspace", other.workspace).stdout
    assert other.workspace in out and "tests" in out and other.key not in out


def test_another_workspace_sees_nothing_of_ours(
    server: Server, client: SandboxClient, bb_template: str, other: Tenant
) -> None:
    """List, get, run, read, write, tunnel and the exec WebSocket all answer 'not found'."""
    with client.sandbox(bb_template) as mine:
        mine.write("/tmp/secret", "ours")
        theirs = other.client
        assert mine.name not in [s.name for s in theirs.list_sandboxes()]
        assert bb_template not in [t.name for t in theirs.list_templates()]
        with pytest.raises(ResourceNotFoundError):
            theirs.get_sandbox(mine.name)
        with pytest.raises(ResourceNotFoundError):
            theirs.get_template(bb_template)
        with pytest.raises(SandboxClientError):
            theirs.create_sandbox(template_name=bb_template)
        with server.http(other.key) as http:
            dp = f"/dp/{mine.id}"
            answers = [
                http.post(f"{dp}/execute", json={"command": "cat /tmp/secret"}),
                http.get(f"{dp}/download", params={"path": "/tmp/secret"}),
                http.post(f"{dp}/upload", params={"path": "/tmp/x"}, files={"file": b"x"}),
                http.delete(f"/api/v2/sandboxes/boxes/{mine.name}"),
            ]
            assert [r.status_code for r in answers] == [404] * 4, [r.text for r in answers]
            for path in ("execute/ws", "tunnel"):
                with pytest.raises(httpx.HTTPStatusError) as err:
                    _upgrade(http, f"{dp}/{path}")
                assert err.value.response.status_code == 404
        assert mine.read("/tmp/secret") == b"ours"  # untouched


def _upgrade(http: httpx.Client, path: str) -> None:
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    http.get(path, headers=headers).raise_for_status()


def test_quotas_trip_at_the_configured_numbers(server: Server, other: Tenant) -> None:
    """Count, CPU and memory limits answer 429 with the quota type the SDKs derive."""
    c = other.client
    c.create_template("half", "local/busybox", cpu="500m", memory="64Mi")
    c.create_template("big", "local/busybox", cpu="250m", memory="512Mi")
    created = []
    try:
        cli(server, "workspaces", "quota", other.workspace, "--sandboxes", "2")
        created += [c.create_sandbox(template_name="half") for _ in range(2)]
        with pytest.raises(QuotaExceededError) as exc:
            c.create_sandbox(template_name="half")
        assert exc.value.quota_type == "sandbox_count", exc.value

        cli(server, "workspaces", "quota", other.workspace, "--sandboxes", "10", "--cpu", "1")
        with pytest.raises(QuotaExceededError) as exc:
            c.create_sandbox(template_name="half")
        assert exc.value.quota_type == "cpu", exc.value

        cli(server, "workspaces", "quota", other.workspace, "--cpu", "4", "--memory", "256Mi")
        with pytest.raises(QuotaExceededError) as exc:
            c.create_sandbox(template_name="big")
        assert exc.value.quota_type == "memory", exc.value
        created.append(c.create_sandbox(template_name="half"))  # 192Mi of 256Mi: fits

        out = cli(server, "workspaces", "list").stdout
        assert f"{other.workspace}  sandboxes 3/10  cpu 4  memory 256Mi" in out

        # A stopped sandbox holds no CPU; starting it again must fit.
        c.stop_sandbox(created[0].name)
        cli(server, "workspaces", "quota", other.workspace, "--cpu", "1")
        with pytest.raises(QuotaExceededError) as exc:
            c.start_sandbox(created[0].name)
        assert exc.value.quota_type == "cpu", exc.value
        cli(server, "workspaces", "quota", other.workspace, "--cpu", "2")
        c.start_sandbox(created[0].name)
    finally:
        for sb in created:
            c.delete_sandbox(sb.name)
        cli(server, "workspaces", "quota", other.workspace, "--clear")
        c.delete_template("half")
        c.delete_template("big")


def test_revoked_key_is_refused_without_a_restart(server: Server) -> None:
    key = cli(server, "keys", "create", "--workspace", "short-lived").stdout.strip()
    assert wait_until(lambda: _accepted(server, key), timeout=5 * TIME_SCALE)
    key_id = next(
        line.split()[0]
        for line in cli(server, "keys", "list", "--workspace", "short-lived").stdout.splitlines()
    )
    cli(server, "keys", "revoke", key_id)
    assert wait_until(lambda: not _accepted(server, key), timeout=5 * TIME_SCALE)
    with server.http(key) as http:
        assert http.get("/api/v2/sandboxes/boxes").status_code == 401
    bad = subprocess.run(
        [*HUTCH, "keys", "revoke", "no-such-id", "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "no key with id" in bad.stderr
