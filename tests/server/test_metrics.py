"""``GET /metrics`` against a real server: each series moves by what was done (a sandbox
created and deleted, commands over each transport, a tunnel, an error), labels stay bounded,
and the endpoint needs an admin key unless the server runs ``--metrics-public``."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hutch import Sandbox, SandboxClient, SandboxClientError
from tests.conftest import (
    HUTCH,
    TIME_SCALE,
    Server,
    remove_all_sandboxes,
    start_server,
    stop_server,
    wait_until,
)
from tests.registry import Registry

pytestmark = pytest.mark.root

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
PROMPT = 10 * TIME_SCALE
ECHO = 7000


def scrape(server: Server, key: str | None = None) -> Series:
    """Every sample of ``/metrics``, by name and labels."""
    r = httpx.get(f"{server.url}/metrics", headers={"X-Api-Key": key or server.key}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    """A sample's value; a series not there yet is 0."""
    return series.get((name, frozenset(labels.items())), 0.0)


def delta(before: Series, after: Series, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_create_and_delete_move_the_sandbox_series(
    server: Server, client: SandboxClient, bb_template: str
) -> None:
    """A create counts one ready create (and its latency) and one more ready sandbox of the
    workspace; its delete counts one delete and takes the sandbox out again."""
    before = scrape(server)
    sb = client.create_sandbox(bb_template)
    created = scrape(server)
    assert sb.id is not None
    client.delete_sandbox(sb.name)
    deleted = scrape(server)

    ready = {"status": "ready", "workspace": "default"}
    assert delta(before, created, "hutch_sandboxes", **ready) == 1
    assert delta(created, deleted, "hutch_sandboxes", **ready) == -1
    assert delta(before, created, "hutch_sandbox_creates_total", outcome="ready") == 1
    assert (
        delta(before, created, "hutch_sandbox_create_duration_seconds_count", outcome="ready") == 1
    )
    assert delta(before, created, "hutch_sandbox_create_duration_seconds_sum", outcome="ready") > 0
    assert delta(created, deleted, "hutch_sandbox_deletes_total", outcome="ok") == 1
    assert delta(created, deleted, "hutch_sandbox_delete_duration_seconds_count", outcome="ok") == 1
    # Routes by their template; the sandbox's name or id is no label anywhere.
    route = {"method": "POST", "route": "/v2/sandboxes/boxes", "status": "201"}
    assert delta(before, created, "hutch_http_requests_total", **route) == 1
    gone = {"method": "DELETE", "route": "/v2/sandboxes/boxes/{name}", "status": "204"}
    assert delta(created, deleted, "hutch_http_requests_total", **gone) == 1
    for _, labels in deleted:
        assert not any(sb.id in v or sb.name in v for _, v in labels), labels


def test_commands_count_their_output_and_round_trips(server: Server, sandbox: Sandbox) -> None:
    """Blocking /execute, /execute/ws and SSE each count one round trip and the exact bytes of
    stdout and stderr they sent; the session log gauge holds the streamed output."""
    command = "printf hello; printf abc >&2"
    before = scrape(server)
    with server.http() as http:
        r = http.post(f"/dp/{sandbox.id}/execute", json={"command": command})
        assert r.status_code == 200 and r.json()["stdout"] == "hello", r.text
        # SSE: read the stream to its exit event.
        with http.stream(
            "POST", f"/dp/{sandbox.id}/execute/stream/start", json={"command": command}
        ) as stream:
            assert stream.status_code == 200
            events = [line for line in stream.iter_lines() if line.startswith("event:")]
        assert events[-1] == "event: exit", events
    result = sandbox.run(command)  # the SDK streams over /execute/ws
    assert (result.stdout, result.stderr) == ("hello", "abc")
    after = scrape(server)

    for transport in ("blocking", "sse", "ws"):
        assert delta(before, after, "hutch_exec_duration_seconds_count", transport=transport) == 1
        for stream_name, size in (("stdout", 5), ("stderr", 3)):
            got = delta(
                before,
                after,
                "hutch_exec_output_bytes_total",
                transport=transport,
                stream=stream_name,
            )
            assert got == size, (transport, stream_name, got)
    # The two streamed commands keep their output (5 + 3 bytes each, plus bookkeeping).
    assert value(after, "hutch_session_log_bytes") >= 16
    assert value(after, "hutch_session_log_budget_bytes") == 256 * 1024**2


def test_tunnel_bytes_both_ways(server: Server, sandbox: Sandbox) -> None:
    """Bytes echoed through a tunnel count in both directions (frames: at least the payload)."""
    sandbox.run(f"nc -ll -p {ECHO} -e /bin/cat </dev/null >/dev/null 2>&1 &")
    assert wait_until(lambda: f":{ECHO} " in sandbox.run("netstat -ltn").stdout, PROMPT)
    payload = b"x" * 100_000
    before = scrape(server)
    with sandbox.tunnel(ECHO) as t, socket.create_connection(("127.0.0.1", t.local_port)) as s:
        s.settimeout(PROMPT)
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            assert chunk, "the echo ended early"
            got += chunk
    assert got == payload
    # The tunnel's socket closes after the block: its last frames are counted by then.
    assert wait_until(
        lambda: (
            delta(before, scrape(server), "hutch_tunnel_bytes_total", direction="out")
            >= len(payload)
        ),
        PROMPT,
    )
    after = scrape(server)
    assert delta(before, after, "hutch_tunnel_bytes_total", direction="in") >= len(payload)
    upgrade = {"method": "WEBSOCKET", "route": "/dp/{sandbox_id}/tunnel", "status": "101"}
    assert delta(before, after, "hutch_http_requests_total", **upgrade) == 1


def test_error_answers_count_by_type_and_carry_the_request_id(server: Server) -> None:
    """A 404 counts under its envelope's error type; its envelope's detail.request_id is the
    X-Request-Id the client sent, which the answer echoes."""
    before = scrape(server)
    with server.http() as http:
        r = http.get("/v2/sandboxes/boxes/no-such-box", headers={"X-Request-Id": "trace:42"})
    assert r.status_code == 404
    assert r.headers["x-request-id"] == "trace:42"
    assert r.json()["detail"] == {
        "error": "NotFound",
        "message": r.json()["detail"]["message"],
        "request_id": "trace:42",
    }
    after = scrape(server)
    assert delta(before, after, "hutch_http_errors_total", error="NotFound", status="404") == 1


def _cli(data_dir: Path, *args: str) -> str:
    return subprocess.run(
        [*HUTCH, *args, "--data-dir", str(data_dir)], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_metrics_need_an_admin_key(server: Server) -> None:
    """Without a key /metrics is 401, with a workspace's non-admin key 403, both enveloped."""
    r = httpx.get(f"{server.url}/metrics", timeout=30)
    assert r.status_code == 401 and r.json()["detail"]["error"] == "Unauthorized", r.text
    key = _cli(server.data_dir, "keys", "create", "--workspace", "metrics-tenant")

    def as_tenant() -> httpx.Response:
        return httpx.get(f"{server.url}/metrics", headers={"X-Api-Key": key}, timeout=30)

    # The server re-reads its keys every second.
    assert wait_until(lambda: as_tenant().status_code == 403, PROMPT)
    r = as_tenant()
    assert r.json()["detail"]["error"] == "Forbidden" and "--admin" in r.text, r.text
    # A workspace with no sandboxes is reported with zeros.
    assert value(scrape(server), "hutch_sandboxes", status="ready", workspace="metrics-tenant") == 0


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with ``--metrics-public``."""
    data = tmp_path_factory.mktemp("metrics-public") / "data"
    srv = start_server(data, "--metrics-public")
    try:
        yield srv
    finally:
        stop_server(srv)


def test_metrics_public_needs_no_key(public: Server) -> None:
    """With --metrics-public a scraper without a key gets the metrics."""
    r = httpx.get(f"{public.url}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    assert "hutch_sandboxes" in r.text and "hutch_http_requests_total" in r.text


@pytest.fixture(scope="module")
def pulling(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, busybox_tar: Path
) -> Iterator[tuple[Server, Registry]]:
    """A server that pulls from the local registry, which holds ``srv/busybox:1``."""
    registry.push(f"tarball:{busybox_tar}", "srv/busybox:1")
    data = tmp_path_factory.mktemp("metrics-pull") / "data"
    srv = start_server(data, "--insecure-registry", registry.host)
    try:
        yield srv, registry
    finally:
        stop_server(srv)
        remove_all_sandboxes(data)


def test_image_pulls_and_failed_creates(pulling: tuple[Server, Registry]) -> None:
    """A pulled image counts one pull ok; an image the registry lacks counts a failed pull, a
    failed create and a 422 ImagePull answer."""
    server, registry = pulling
    before = scrape(server)
    with server.client() as client:
        client.create_template("pulled", f"{registry.host}/srv/busybox:1", memory="64Mi")
        client.create_template("missing", f"{registry.host}/srv/nothing-here:1", memory="64Mi")
        sb = client.create_sandbox("pulled", timeout=120)
        client.delete_sandbox(sb.name)
        with pytest.raises(SandboxClientError) as failed:
            client.create_sandbox("missing", timeout=120)
        assert failed.value.status == 422
    after = scrape(server)
    assert delta(before, after, "hutch_image_pulls_total", outcome="ok") == 1
    # The template's prefetch and the create each tried (the failure is not remembered).
    assert delta(before, after, "hutch_image_pulls_total", outcome="error") >= 1
    assert delta(before, after, "hutch_sandbox_creates_total", outcome="failed") == 1
    assert delta(before, after, "hutch_sandbox_creates_total", outcome="ready") == 1
    assert delta(before, after, "hutch_http_errors_total", error="ImagePull", status="422") == 1
