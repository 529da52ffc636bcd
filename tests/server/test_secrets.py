"""Workspace secrets (``/secrets``, ``hutch secrets``): set, list and delete; a value is never
answered, never stored in clear, and is seen by its own workspace only."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    HUTCH,
    Server,
    data_dir_with_busybox,
    start_server,
    stop_server,
    wait_until,
)

pytestmark = pytest.mark.root
API = "/api/v2/sandboxes"
VALUE = "sk-live-7f3a9c1e5b2d4f60a8e9"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Server]:
    data = data_dir_with_busybox(tmp_path_factory.mktemp("secrets"), busybox_tar)
    s = start_server(data)
    try:
        yield s
    finally:
        stop_server(s)


def hutch(srv: Server, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HUTCH, *args, "--data-dir", str(srv.data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_api_never_answers_a_value(srv: Server) -> None:
    """PUT creates then replaces, list gives names and times only, DELETE removes (then 404);
    bad names 422; the store and the key file hold no clear value."""
    with srv.http() as http:
        r = http.put(f"{API}/secrets/OPENAI_API_KEY", json={"value": VALUE})
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"name", "created_at", "updated_at"}
        r = http.put(f"{API}/secrets/OPENAI_API_KEY", json={"value": VALUE + "2"})
        assert r.status_code == 200
        listed = http.get(f"{API}/secrets")
        assert listed.status_code == 200
        assert [s["name"] for s in listed.json()["secrets"]] == ["OPENAI_API_KEY"]
        assert VALUE not in listed.text and VALUE not in r.text
        bad = http.put(f"{API}/secrets/has%20space", json={"value": "x"})
        assert bad.status_code == 422 and bad.json()["detail"]["error"] == "ValidationError"
        assert http.put(f"{API}/secrets/EMPTY", json={"value": ""}).status_code == 422
        assert http.delete(f"{API}/secrets/OPENAI_API_KEY").status_code == 204
        gone = http.delete(f"{API}/secrets/OPENAI_API_KEY")
        assert gone.status_code == 404 and gone.json()["detail"]["error"] == "NotFound"
        assert http.get(f"{API}/secrets").json() == {"secrets": []}
    key = srv.data_dir / "secrets.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    for f in srv.data_dir.glob("hutch.db*"):
        assert VALUE.encode() not in f.read_bytes()


def test_workspaces_see_only_their_own(srv: Server) -> None:
    """A secret set in one workspace is not listed, replaced or deleted through another's key."""
    other = hutch(srv, "keys", "create", "--workspace", "other").stdout.strip()
    with srv.http() as mine, srv.http(other) as theirs:
        # A running server takes a new key within a second (it re-reads the key table).
        assert wait_until(lambda: theirs.get(f"{API}/secrets").status_code == 200)
        assert mine.put(f"{API}/secrets/MINE", json={"value": VALUE}).status_code == 200
        assert theirs.get(f"{API}/secrets").json() == {"secrets": []}
        assert theirs.delete(f"{API}/secrets/MINE").status_code == 404
        assert [s["name"] for s in mine.get(f"{API}/secrets").json()["secrets"]] == ["MINE"]
        assert mine.delete(f"{API}/secrets/MINE").status_code == 204


def test_cli_reads_the_value_from_stdin(srv: Server) -> None:
    """`hutch secrets set` takes the value from stdin (never argv), `list` shows names only,
    `rm` removes; the API sees the same secrets; an unknown workspace exits 1."""
    done = hutch(srv, "secrets", "set", "GH_TOKEN", stdin=VALUE + "\n")
    assert done.returncode == 0, done.stderr
    listed = hutch(srv, "secrets", "list")
    assert listed.returncode == 0 and "GH_TOKEN" in listed.stdout and VALUE not in listed.stdout
    with srv.http() as http:
        assert [s["name"] for s in http.get(f"{API}/secrets").json()["secrets"]] == ["GH_TOKEN"]
    assert hutch(srv, "secrets", "rm", "GH_TOKEN").returncode == 0
    assert hutch(srv, "secrets", "rm", "GH_TOKEN").returncode == 1
    missing = hutch(srv, "secrets", "list", "--workspace", "nope")
    assert missing.returncode == 1 and "no workspace" in missing.stderr


def test_openapi_lists_the_routes(srv: Server) -> None:
    """The OpenAPI document states the secrets routes with the error envelope."""
    doc = httpx.get(f"{srv.url}/openapi.json").json()
    ops = doc["paths"][f"{API}/secrets/{{name}}"]
    assert {"put", "delete"} <= set(ops)
    assert "404" in ops["delete"]["responses"] and "422" in ops["put"]["responses"]
    assert "get" in doc["paths"][f"{API}/secrets"]
