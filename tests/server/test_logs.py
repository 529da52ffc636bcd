"""The server's log on stderr (``--log-format json``, the default): only JSON lines, one per
request (no uvicorn access line besides) and one per sandbox lifecycle transition, joined by the
request id the client sees in ``X-Request-Id``."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    API_KEY,
    HUTCH,
    TIME_SCALE,
    data_dir_with_busybox,
    free_port,
    remove_all_sandboxes,
    wait_until,
)

pytestmark = pytest.mark.root

BOXES = "/v2/sandboxes/boxes"
PROMPT = 15 * TIME_SCALE


@dataclass
class Logged:
    """A server whose stderr (the log) is kept apart from its stdout."""

    url: str
    proc: subprocess.Popen[bytes]
    stderr: Path
    data: Path

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-Api-Key": API_KEY}, timeout=60)

    def lines(self) -> list[str]:
        return self.stderr.read_text().splitlines()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def serve(data: Path, *extra: str) -> Logged:
    port = free_port()
    stderr = data.parent / "stderr.log"
    with stderr.open("wb") as err, (data.parent / "stdout.log").open("wb") as out:
        proc = subprocess.Popen(
            [*HUTCH, "serve", "--port", str(port), "--data-dir", str(data), *extra],
            env={**os.environ, "HUTCH_API_KEY": API_KEY},
            stdout=out,
            stderr=err,
        )
    srv = Logged(f"http://127.0.0.1:{port}", proc, stderr, data)

    def up() -> bool:
        try:
            return httpx.get(f"{srv.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    assert wait_until(up, 30) and proc.poll() is None, stderr.read_text()
    return srv


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[Logged]:
    """A server with ``--log-format json`` and a busybox template ``bb``."""
    data = data_dir_with_busybox(tmp_path_factory.mktemp("logs"), busybox_tar)
    srv = serve(data, "--log-format", "json")
    try:
        with srv.http() as http:
            body = {"name": "bb", "image": "local/busybox", "resources": {"memory": "64Mi"}}
            assert http.post("/v2/sandboxes/templates", json=body).status_code == 201
        yield srv
    finally:
        srv.stop()
        remove_all_sandboxes(data)


def _one(records: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def test_requests_and_transitions_share_the_request_id(logged: Logged) -> None:
    """A create's request line and its sandbox's transitions (to provisioning, to ready) carry
    the id the client sent and got back; the delete's line and its transition carry the
    delete's id; stderr holds JSON lines only, one per request."""
    with logged.http() as http:
        r = http.post(BOXES, json={"template_name": "bb"}, headers={"X-Request-Id": "create-1"})
        assert r.status_code == 201, r.text
        assert r.headers["x-request-id"] == "create-1"
        box = r.json()
        gone = http.delete(f"{BOXES}/{box['name']}", headers={"X-Request-Id": "delete-1"})
        assert gone.status_code == 204 and gone.headers["x-request-id"] == "delete-1"
    # The request's line is written once its answer has gone, so it may follow the answer.
    assert wait_until(
        lambda: any('"delete-1"' in line and '"http.request"' in line for line in logged.lines()),
        PROMPT,
    )
    records = logged.records()  # every line is JSON, or this raises

    line = _one(records, event="http.request", request_id="create-1")
    assert line["method"] == "POST" and line["route"] == BOXES and line["status"] == 201
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] > 0
    assert line["sandbox_id"] == box["id"] and line["workspace_id"]
    created = _one(records, event="sandbox.transition", request_id="create-1", to="provisioning")
    ready = _one(records, event="sandbox.transition", request_id="create-1", to="ready")
    for transition in (created, ready):
        assert transition["sandbox_id"] == box["id"]
        assert transition["workspace_id"] == line["workspace_id"]
    assert created["from"] is None and ready["from"] == "provisioning"
    assert ready["duration_ms"] > 0 and ready["reason"]

    deleted = _one(records, event="http.request", request_id="delete-1")
    assert deleted["route"] == BOXES + "/{name}" and deleted["status"] == 204
    assert deleted["sandbox_id"] == box["id"]
    end = _one(records, event="sandbox.transition", request_id="delete-1")
    assert (end["from"], end["to"], end["sandbox_id"]) == ("ready", "deleted", box["id"])
    # uvicorn's access log is replaced, not doubled.
    assert not [r for r in records if r["logger"] == "uvicorn.access"]
    assert any(r["logger"] == "uvicorn.error" for r in records)  # its own log: formatted


def test_stop_and_start_are_transitions(logged: Logged) -> None:
    """Stopping and starting a sandbox log ready -> stopped and stopped -> ready, each with the
    request id of the call that did it and how long it took."""
    with logged.http() as http:
        box = http.post(BOXES, json={"template_name": "bb"}).json()
        for op in ("stop", "start"):
            r = http.post(f"{BOXES}/{box['name']}/{op}", headers={"X-Request-Id": f"{op}-1"})
            assert r.status_code == 200, r.text
        assert http.delete(f"{BOXES}/{box['name']}").status_code == 204
    assert wait_until(lambda: any('"start-1"' in line for line in logged.lines()), PROMPT)
    records = logged.records()
    stop = _one(records, event="sandbox.transition", request_id="stop-1")
    start = _one(records, event="sandbox.transition", request_id="start-1")
    assert (stop["from"], stop["to"], stop["reason"]) == ("ready", "stopped", "stop requested")
    assert (start["from"], start["to"], start["reason"]) == ("stopped", "ready", "start requested")
    for transition in (stop, start):
        assert transition["sandbox_id"] == box["id"] and transition["duration_ms"] > 0


def test_reaper_transitions_say_why(logged: Logged) -> None:
    """A sandbox past its ttl_seconds is deleted by the reaper: its transition's reason is the
    setting, and the reaper's action is counted."""
    with logged.http() as http:
        r = http.post(BOXES, json={"template_name": "bb", "ttl_seconds": 2})
        assert r.status_code == 201, r.text
        box = r.json()
        assert wait_until(lambda: http.get(f"{BOXES}/{box['name']}").status_code == 404, PROMPT)
        # Counted once the delete is done, a moment after the record is gone.
        counted = 'hutch_reaper_actions_total{action="ttl_delete"} 1.0'
        assert wait_until(lambda: counted in http.get("/metrics").text, PROMPT)
    end = _one(logged.records(), event="sandbox.transition", sandbox_id=box["id"], to="deleted")
    assert end["reason"] == "ttl_seconds" and "request_id" not in end


def test_bad_request_ids_are_replaced(logged: Logged) -> None:
    """A client's X-Request-Id outside 1–128 of [A-Za-z0-9._:-] is replaced by a new id, which
    the answer, its envelope and its log line carry."""
    with logged.http() as http:
        for bad in ("has space", "x" * 129, 'quote"d', ""):
            r = http.get(f"{BOXES}/nope", headers={"X-Request-Id": bad})
            assert r.status_code == 404
            rid = r.headers["x-request-id"]
            assert rid != bad and re.fullmatch(r"[0-9a-f]{32}", rid)
            assert r.json()["detail"]["request_id"] == rid
            assert wait_until(lambda rid=rid: any(rid in line for line in logged.lines()), PROMPT)
    line = _one(logged.records(), event="http.request", request_id=rid)
    assert line["error"] == "NotFound" and line["status"] == 404


def test_text_format(tmp_path: Path) -> None:
    """--log-format text writes one readable line per request, with its fields as key=value."""
    data = tmp_path / "data"
    srv = serve(data, "--log-format", "text")
    try:
        r = httpx.get(f"{srv.url}/healthz", headers={"X-Request-Id": "text-1"})
        assert r.headers["x-request-id"] == "text-1"
        assert wait_until(lambda: any("request_id=text-1" in x for x in srv.lines()), PROMPT)
    finally:
        srv.stop()
    line = next(x for x in srv.lines() if "request_id=text-1" in x)
    assert "hutch.request: GET /healthz 200" in line and "route=/healthz" in line
    assert not any(x.startswith("{") for x in srv.lines())
