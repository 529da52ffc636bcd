"""``kill -9`` of the server at aimed moments loses nothing (issue 12's fault suite, part one).

A server with two sandboxes, each with a file of its own: a *victim* that a request is aimed at
(stop, start, delete, upload, or a create of a new sandbox) and a *bystander*. The server is
killed with SIGKILL 0–50 ms after the request is sent, then started again on the same data dir.
After each kill:

* no file of a sandbox that still exists is lost (a stopped one is started to check);
* no record is ``failed`` unless its create was the thing interrupted;
* every sandbox id the server ever made and no longer has is gone from the host: no runc
  container, no writable layer, no mount, no cgroup.

Sandboxes outlive their server, so a kill does not stop them; a request that the kill cuts
short either happened or did not, and the record says which.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    data_dir_with_busybox,
    remove_all_sandboxes,
    start_server,
    wait_until,
)

pytestmark = pytest.mark.root
API = "/api/v2/sandboxes"
ARGS = ("--default-image", "local/busybox")
DELAYS_MS = (0, 5, 15, 50)
ACTIONS = ("stop", "start", "delete", "upload", "create")


class Crashing:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.srv = start_server(data, *ARGS)
        self.made: set[str] = set()

    def kill(self) -> None:
        self.srv.proc.kill()
        self.srv.proc.wait()

    def restart(self) -> None:
        self.srv = start_server(self.data, *ARGS)

    def http(self) -> httpx.Client:
        return self.srv.http()


@pytest.fixture(scope="module")
def crashing(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Crashing]:
    data = data_dir_with_busybox(tmp_path_factory.mktemp("crash"), busybox_tar)
    c = Crashing(data)
    try:
        yield c
    finally:
        c.kill()
        remove_all_sandboxes(data)


def ok(r: httpx.Response) -> Any:
    assert r.status_code < 300, (r.request.method, r.request.url.path, r.status_code, r.text)
    return r.json() if r.content else None


def box(http: httpx.Client, name: str) -> dict[str, Any] | None:
    r = http.get(f"{API}/boxes/{name}")
    return None if r.status_code == 404 else ok(r)


def read(http: httpx.Client, sb: dict[str, Any], path: str) -> str:
    if sb["status"] == "stopped":
        ok(http.post(f"{API}/boxes/{sb['name']}/start"))
    out = ok(http.post(f"/dp/{sb['id']}/execute", json={"command": f"cat {path}"}))
    return str(out["stdout"])


def setup_pair(c: Crashing, action: str) -> dict[str, dict[str, Any]]:
    with c.http() as http:
        boxes = {}
        for name in ("victim", "bystander"):
            sb = box(http, name)
            if sb is None:
                sb = ok(http.post(f"{API}/boxes", json={"name": name}))
            c.made.add(sb["id"])
            if sb["status"] == "stopped":
                ok(http.post(f"{API}/boxes/{name}/start"))
            ok(http.post(f"/dp/{sb['id']}/execute", json={"command": f"echo {name} > /keep"}))
            boxes[name] = sb
        if action == "start":
            ok(http.post(f"{API}/boxes/victim/stop"))
        if box(http, "newcomer") is not None:
            ok(http.delete(f"{API}/boxes/newcomer"))
        return boxes


def aim(c: Crashing, action: str, victim: dict[str, Any], delay_ms: int) -> None:
    """Send the request from a thread, SIGKILL the server ``delay_ms`` later."""

    def send() -> None:
        with c.http() as http:
            try:
                if action in ("stop", "start"):
                    http.post(f"{API}/boxes/victim/{action}")
                elif action == "delete":
                    http.delete(f"{API}/boxes/victim")
                elif action == "upload":
                    files = {"file": ("big", os.urandom(8 << 20))}
                    http.post(f"/dp/{victim['id']}/upload", params={"path": "/big"}, files=files)
                else:
                    http.post(f"{API}/boxes", json={"name": "newcomer", "wait_for_ready": True})
            except httpx.HTTPError:
                pass  # the kill cut it short: what happened is the record's to say

    t = threading.Thread(target=send)
    t.start()
    time.sleep(delay_ms / 1000)  # the fault's timing is the point here, not synchronisation
    c.kill()
    t.join()


def leaked(c: Crashing, live: set[str]) -> list[str]:
    gone = c.made - live
    found = []
    runc = c.srv.runc_ids()
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()
    for sid in gone:
        if sid in runc:
            found.append(f"runc container {sid}")
        if (c.data / "storage" / sid).exists():
            found.append(f"writable layer {sid}")
        if sid in mounts:
            found.append(f"mount of {sid}")
        found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/hutch/{sid}")]
    return found


@pytest.mark.parametrize("action", ACTIONS)
def test_kill_during(crashing: Crashing, action: str) -> None:
    """SIGKILL 0, 5, 15 and 50 ms after a request: after a restart, every sandbox that exists
    has its files, none is failed but an interrupted create, nothing of a deleted one stays."""
    c = crashing
    for delay in DELAYS_MS:
        boxes = setup_pair(c, action)
        aim(c, action, boxes["victim"], delay)
        c.restart()
        with c.http() as http:
            listed = ok(http.get(f"{API}/boxes"))
            items = listed["sandboxes"] if isinstance(listed, dict) else listed
            live = {sb["id"] for sb in items}
            c.made.update(live)
            for sb in items:
                if sb["name"] == "newcomer":
                    assert sb["status"] in ("ready", "failed"), sb
                    if sb["status"] == "failed":
                        assert "interrupted" in sb["status_message"], sb
                    continue
                assert sb["status"] in ("ready", "stopped"), (action, delay, sb)
                assert read(http, sb, "/keep") == f"{sb['name']}\n", (action, delay, sb)
            names = {sb["name"] for sb in items}
            assert "bystander" in names
            assert action == "delete" or "victim" in names, (action, delay, names)
            assert wait_until(lambda live=live: not leaked(c, live), 10), leaked(c, live)
