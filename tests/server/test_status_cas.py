"""Status changes on a real server: a stop racing a delete from two clients ends in one of the
allowed outcomes (never a 500, never a sandbox left behind), and quota errors carry
``detail.quota_type`` next to the message the langsmith SDKs classify."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch import QuotaExceededError
from hutch.server._openapi import ErrorEnvelope
from tests.compat._venvs import NEWEST_015, langsmith_python
from tests.conftest import (
    Server,
    data_dir_with_busybox,
    remove_all_sandboxes,
    start_server,
    stop_server,
)
from tests.server.test_races import no_5xx, together

pytestmark = pytest.mark.root
API = "/api/v2/sandboxes"
ROUNDS = 10
#: Creates a sandbox with the langsmith SDK; prints the error's class and quota type.
LANGSMITH_CREATE = """
import json, sys
from langsmith.sandbox import SandboxClient
client = SandboxClient(api_endpoint=sys.argv[1], api_key=sys.argv[2], max_retries=0)
try:
    client.create_sandbox(name=sys.argv[3])
except Exception as exc:
    print(json.dumps([type(exc).__name__, getattr(exc, "quota_type", None)]))
"""


def langsmith_create(srv: Server, name: str) -> list[str]:
    """What the newest langsmith SDK raises for a create of ``name`` (class, quota type)."""
    python = langsmith_python(NEWEST_015, websockets=True)
    args = [str(python), "-c", LANGSMITH_CREATE, srv.url + API, srv.key, name]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    result: list[str] = json.loads(out)
    return result


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Server]:
    """A server whose default image is busybox (500m and 512Mi a sandbox), with room for two
    running sandboxes' CPU, three sandboxes and 2 GiB of memory per workspace."""
    data = data_dir_with_busybox(tmp_path_factory.mktemp("cas"), busybox_tar)
    server = start_server(
        data,
        "--default-image",
        "local/busybox",
        "--quota-sandboxes",
        "3",
        "--quota-cpu",
        "1",
        "--quota-memory",
        "2Gi",
    )
    try:
        yield server
    finally:
        stop_server(server)
        remove_all_sandboxes(data)


def test_stop_racing_delete(srv: Server) -> None:
    """The delete answers 204; the stop 200 (stopped, before the delete), 404 (after it) or
    NotReady naming the deleting status (during it); the sandbox and its container are gone."""
    with srv.http() as a, srv.http() as b:
        for i in range(ROUNDS):
            name = f"stopdel-{i}"
            made = a.post(f"{API}/boxes", json={"name": name, "wait_for_ready": True})
            assert made.status_code == 201, made.text
            stop, delete = together(
                lambda name=name: a.post(f"{API}/boxes/{name}/stop"),
                lambda name=name: b.delete(f"{API}/boxes/{name}"),
            )
            no_5xx([stop, delete])
            assert delete.status_code == 204, delete.text
            if stop.status_code == 200:
                assert stop.json()["status"] == "stopped", stop.text
            elif stop.status_code == 400:
                detail = stop.json()["detail"]
                assert detail["error"] == "NotReady" and "is deleting" in detail["message"]
            else:
                assert stop.status_code == 404, stop.text
            assert a.get(f"{API}/boxes/{name}").status_code == 404
            assert made.json()["id"] not in srv.runc_ids()


def test_quota_errors_carry_their_type(srv: Server) -> None:
    """Each quota's 429 has ``detail.quota_type`` (cpu, memory, sandboxes; in the OpenAPI
    document's envelope) and a message with
        the words the SDKs classify by; hutch's SDK and the newest langsmith SDK report the same
    type. Starts and resumes are under the quota too."""
    names: list[str] = []
    with srv.http() as http, srv.client(max_retries=0) as client:

        def create(name: str, **extra: object) -> tuple[int, dict[str, str]]:
            r = http.post(f"{API}/boxes", json={"name": name, "wait_for_ready": True, **extra})
            if r.status_code == 201:
                names.append(name)
                return 201, {}
            ErrorEnvelope.model_validate(r.json())  # as the OpenAPI document states it
            detail: dict[str, str] = r.json()["detail"]
            return r.status_code, detail

        try:
            assert create("q-1")[0] == create("q-2")[0] == 201  # all the CPU in use
            status, detail = create("q-3")
            assert (status, detail["error"], detail["quota_type"]) == (429, "QuotaExceeded", "cpu")
            assert "cpu" in detail["message"].lower()
            with pytest.raises(QuotaExceededError) as caught:
                client.create_sandbox(name="q-3")
            assert caught.value.quota_type == "cpu"
            assert langsmith_create(srv, "q-3") == ["QuotaExceededError", "cpu"]

            assert http.post(f"{API}/boxes/q-2/stop").status_code == 200  # frees its CPU
            status, detail = create("q-big", mem_bytes=3 << 30)
            assert (status, detail["quota_type"]) == (429, "memory"), detail
            assert "memory" in detail["message"].lower()

            assert create("q-3")[0] == 201  # three sandboxes: the count is full
            status, detail = create("q-4")
            assert (status, detail["quota_type"]) == (429, "sandboxes"), detail
            assert "sandbox" in detail["message"].lower() and "limit" in detail["message"]
            with pytest.raises(QuotaExceededError) as caught:
                client.create_sandbox(name="q-4")
            assert caught.value.quota_type == "sandbox_count"
            assert langsmith_create(srv, "q-4") == ["QuotaExceededError", "sandbox_count"]

            # A start, and the resume of a stopped one on its first data-plane call, count its
            # CPU again: with q-1 and q-3 running there is none left for q-2.
            stopped = http.get(f"{API}/boxes/q-2").json()
            for r in (
                http.post(f"{API}/boxes/q-2/start"),
                http.post(f"/dp/{stopped['id']}/execute", json={"command": "true"}),
            ):
                assert r.status_code == 429, r.text
                assert r.json()["detail"]["quota_type"] == "cpu", r.text
            assert http.get(f"{API}/boxes/q-2").json()["status"] == "stopped"
        finally:
            for name in names:
                http.delete(f"{API}/boxes/{name}")
