"""Requests racing on one sandbox get clear answers, never a 500: a create racing a delete of
the same name, a PATCH racing a delete, a stop racing a start. Each race runs 20 times; what
is left afterwards is consistent (the sandbox is there and works, or it is gone from the host).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    Server,
    data_dir_with_busybox,
    remove_all_sandboxes,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.root
API = "/api/v2/sandboxes"
ROUNDS = 20


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Server]:
    data = data_dir_with_busybox(tmp_path_factory.mktemp("races"), busybox_tar)
    server = start_server(data, "--default-image", "local/busybox")
    try:
        yield server
    finally:
        stop_server(server)
        remove_all_sandboxes(data)


def together(*calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
    """Run the calls at the same moment (a barrier releases them) and return their answers."""
    barrier = threading.Barrier(len(calls))
    answers: list[httpx.Response | None] = [None] * len(calls)

    def go(i: int) -> None:
        barrier.wait()
        answers[i] = calls[i]()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a is not None for a in answers)
    return [a for a in answers if a is not None]


def no_5xx(answers: list[httpx.Response]) -> None:
    for a in answers:
        assert a.status_code < 500, (a.request.method, a.request.url.path, a.text)
        if a.status_code >= 400:
            detail = a.json()["detail"]
            assert detail["error"] and detail["message"], a.text


def consistent(srv: Server, http: httpx.Client, name: str) -> None:
    r = http.get(f"{API}/boxes/{name}")
    if r.status_code == 404:
        return
    sb = r.json()
    assert sb["status"] == "ready", sb
    out = http.post(f"/dp/{sb['id']}/execute", json={"command": "echo alive"}).json()
    assert out["stdout"] == "alive\n", out
    assert http.delete(f"{API}/boxes/{name}").status_code == 204
    assert sb["id"] not in srv.runc_ids()


def test_create_racing_delete_of_the_same_name(srv: Server) -> None:
    """The create answers 201 or a 404 saying the sandbox was deleted while being created; the
    delete 204 or 404; never a 500; nothing half-made is left."""
    with srv.http() as a, srv.http() as b:
        for i in range(ROUNDS):
            name = f"racer-{i}"
            body = {"name": name, "wait_for_ready": True, "timeout": 60}
            answers = together(
                lambda body=body: a.post(f"{API}/boxes", json=body),
                lambda name=name: b.delete(f"{API}/boxes/{name}"),
            )
            no_5xx(answers)
            create, delete = answers
            assert create.status_code in (201, 404), create.text
            if create.status_code == 404:
                assert "deleted while it was being created" in create.json()["detail"]["message"]
            assert delete.status_code in (204, 404), delete.text
            consistent(srv, a, name)


def test_patch_racing_delete(srv: Server) -> None:
    """A PATCH racing a delete answers 200 (it came first) or 404, never a 500."""
    with srv.http() as a, srv.http() as b:
        for i in range(ROUNDS):
            name = f"patched-{i}"
            assert a.post(f"{API}/boxes", json={"name": name}).status_code == 201
            answers = together(
                lambda name=name: a.patch(f"{API}/boxes/{name}", json={"idle_ttl_seconds": 1200}),
                lambda name=name: b.delete(f"{API}/boxes/{name}"),
            )
            no_5xx(answers)
            assert answers[0].status_code in (200, 404), answers[0].text
            assert answers[1].status_code == 204, answers[1].text
            assert a.get(f"{API}/boxes/{name}").status_code == 404


def test_stop_racing_start(srv: Server) -> None:
    """Stop and start at once leave the sandbox stopped or ready (as the last one said), its
    files kept, never a 500."""
    with srv.http() as a, srv.http() as b:
        sb = a.post(f"{API}/boxes", json={"name": "flip"}).json()
        a.post(f"/dp/{sb['id']}/execute", json={"command": "echo kept > /root/f"})
        for _ in range(ROUNDS):
            answers = together(
                lambda: a.post(f"{API}/boxes/flip/stop"),
                lambda: b.post(f"{API}/boxes/flip/start"),
            )
            no_5xx(answers)
            status = a.get(f"{API}/boxes/flip").json()["status"]
            assert status in ("ready", "stopped")
        if a.get(f"{API}/boxes/flip").json()["status"] == "stopped":
            assert a.post(f"{API}/boxes/flip/start").status_code == 200
        out = a.post(f"/dp/{sb['id']}/execute", json={"command": "cat /root/f"}).json()
        assert out["stdout"] == "kept\n"
        consistent(srv, a, "flip")
