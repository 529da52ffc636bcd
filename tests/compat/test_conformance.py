"""The public ``langsmith`` SDKs work against a hutch server unchanged: the protocol spec's
Appendix B checklist for 0.7.30, 0.7.31 and 0.7.33 (each with and without ``websockets``) and the
newest 0.15.x (spec §4–§9).

``flow.py`` runs once per SDK in that SDK's own virtualenv, against one server for the suite; each
test asserts one checklist item for every SDK it applies to, and its id names the SDK
(``test_run[langsmith-0.7.31-ws]``). The flow reports the SDK version it really ran, and
:func:`got` checks it, so a result can never be credited to the wrong SDK.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.compat._venvs import SDKS, Sdk
from tests.conftest import Server, free_port

pytestmark = pytest.mark.root
HERE = Path(__file__).parent
IMAGE = "local/busybox"


def sdks(*needs: str) -> list[Any]:
    """The SDKs a checklist item applies to (properties of :class:`Sdk`), as test parameters."""
    return [pytest.param(s, id=s.id) for s in SDKS if all(getattr(s, n) for n in needs)]


class Got:
    """One SDK's observations."""

    def __init__(self, sdk: Sdk, data: dict[str, Any]) -> None:
        self.sdk, self.data = sdk, data

    def __getitem__(self, name: str) -> Any:
        assert name in self.data, f"{self.sdk.id}: the flow did not run {name!r}"
        value = self.data[name]
        assert not (isinstance(value, dict) and "unexpected" in value), (
            f"{self.sdk.id}, {name}: {value['unexpected']}"
        )
        return value


def run_flow(server: Server, sdk: Sdk) -> dict[str, Any]:
    # 0.15 strips a trailing /api (or /api/v1) and appends /api/v2/sandboxes (spec §1.2); the
    # template era appends /v2/sandboxes to the endpoint as it is.
    endpoint = f"{server.url}/api" if sdk.newest else server.url
    env = {**os.environ, "LANGSMITH_ENDPOINT": endpoint, "LANGSMITH_API_KEY": server.key}
    prefix = "ls" + sdk.id.removeprefix("langsmith-").replace(".", "")
    args = {"prefix": prefix, "image": IMAGE, "ports": [free_port() for _ in range(5)]}
    proc = subprocess.run(
        [str(sdk.python()), str(HERE / "flow.py"), json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if proc.returncode != 0:
        return {"failed": proc.stderr[-4000:]}
    data: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    data["stderr"] = proc.stderr
    return data


@pytest.fixture(scope="session")
def observations(compat_server: Server) -> Iterator[Callable[[Sdk], dict[str, Any]]]:
    """Each SDK's flow, run once, on first use."""
    cache: dict[str, dict[str, Any]] = {}

    def get(sdk: Sdk) -> dict[str, Any]:
        if sdk.id not in cache:
            cache[sdk.id] = run_flow(compat_server, sdk)
        return cache[sdk.id]

    yield get


@pytest.fixture
def got(request: pytest.FixtureRequest, observations: Callable[[Sdk], dict[str, Any]]) -> Got:
    sdk: Sdk = request.param
    data = observations(sdk)
    assert "failed" not in data, f"{sdk.id}: the flow failed:\n{data['failed']}"
    ran = data["sdk"]
    assert (ran["version"], ran["websockets"]) == (sdk.version, sdk.websockets), ran
    assert (ran["templates"], ran["start_stop"]) == (sdk.templates, sdk.start_stop), ran
    return Got(sdk, data)


def parametrize(*needs: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("got", sdks(*needs), indirect=True)


def error(value: dict[str, Any] | None, kind: str, **attrs: Any) -> dict[str, Any]:
    """Assert an observed error is of class ``kind`` with ``attrs``; return it."""
    assert value is not None, f"expected {kind}, nothing was raised"
    assert value["type"] == kind, value
    for key, want in attrs.items():
        assert value[key] == want, (key, value)
    return value


def seconds_between(a: str, b: str) -> float:
    return (datetime.fromisoformat(b.rstrip("Z")) - datetime.fromisoformat(a.rstrip("Z"))).seconds


def contiguous(chunks: list[list[Any]], start: dict[str, int] | None = None) -> bool:
    """Each chunk starts at the byte offset where the previous one of its stream ended."""
    ends = dict(start or {"stdout": 0, "stderr": 0})
    for stream, data, offset in chunks:
        if offset != ends[stream]:
            return False
        ends[stream] += len(data.encode())
    return True


# -- control plane -------------------------------------------------------------------------------


@parametrize()
def test_sandbox_context_manager(got: Got) -> None:
    """``client.sandbox()`` creates a ready sandbox with a data plane and deletes it on exit."""
    _, status, has_dataplane, template = got["sandbox"]
    assert (status, has_dataplane) == ("ready", True)
    assert template == (f"{got['template'][0]}" if got.sdk.templates else None)
    error(got["context_manager_deleted"], "ResourceNotFoundError", resource_type="sandbox")


@parametrize("templates")
def test_templates_crud_and_errors(got: Got) -> None:
    """Templates: create, get, list, rename, delete; 404, 409 and in-use mappings (§2.1)."""
    assert got["template"][1:] == ["local/busybox:latest", "500m", "256Mi"]
    t = got["templates"]
    assert t["made"][1:] == ["local/busybox:latest", "250m", "128Mi"]
    assert t["got"][1:] == ["local/busybox:latest", True] and t["listed"]
    error(t["duplicate"], "SandboxClientError")
    error(t["conflict"], "ResourceNameConflictError", resource_type="template")
    error(t["in_use"], "ResourceInUseError", resource_type="template")
    error(t["old_name"], "ResourceNotFoundError", resource_type="template")
    error(t["delete_missing"], "ResourceNotFoundError", resource_type="template")
    assert "not a CPU quantity" in error(t["bad_cpu"], "ValidationError")["str"]
    assert error(t["volumes"], "SandboxClientError")["str"].startswith("Volumes are not supported")


@parametrize()
def test_status_get_list(got: Got) -> None:
    """get_sandbox_status, get_sandbox and list_sandboxes; a missing sandbox is a 404 (§2.2)."""
    s = got["status_get_list"]
    assert s["status"] == "ready" and s["get"][1:] == ["ready", True, True] and s["listed"]
    error(s["missing"], "ResourceNotFoundError", resource_type="sandbox")
    error(s["missing_status"], "ResourceNotFoundError", resource_type="sandbox")


@parametrize()
def test_wait_for_ready_false_then_wait_for_sandbox(got: Got) -> None:
    """wait_for_ready=False answers at once (provisioning); wait_for_sandbox returns it ready."""
    w = got["wait_for_ready_false"]
    assert w["first"] == "provisioning"
    assert w["status"] in ("provisioning", "ready")
    assert w["ready"] == ["ready", "up\n"]
    if got.sdk.templates:  # the template era refuses data-plane calls on a provisioning object
        error(w["early"], "SandboxNotReadyError")


@parametrize()
def test_update_and_delete(got: Got) -> None:
    """Rename (the data plane goes by id, so the old object still works), name conflict, 404s,
    delete and delete again (§2.2)."""
    u = got["update_and_delete"]
    assert u["renamed"][1] is True and u["old_object_runs"] == "same\n"
    error(u["old_name"], "ResourceNotFoundError", resource_type="sandbox")
    error(u["conflict"], "ResourceNameConflictError", resource_type="sandbox")
    error(u["missing"], "ResourceNotFoundError", resource_type="sandbox")
    error(u["deleted"], "ResourceNotFoundError", resource_type="sandbox")
    error(u["delete_again"], "ResourceNotFoundError", resource_type="sandbox")


@parametrize("templates")
def test_lifetimes_template_era(got: Got) -> None:
    """ttl_seconds and idle_ttl_seconds on create and update; expires_at is the earlier
    deadline; 0 clears; the SDK's own multiple-of-60 check (§2.2)."""
    lt = got["lifetimes"]
    ttl, idle, created, expires = lt["made"]
    assert (ttl, idle) == (3600, 600)
    assert seconds_between(created, expires) in (599, 600)  # idle first (last activity ~creation)
    ttl, idle, created, expires = lt["idle_off"]
    assert (ttl, idle) == (3600, None) and seconds_between(created, expires) == 3600
    assert lt["all_off"] == [None, None, None]
    assert "multiple of 60" in error(lt["not_a_minute"], "ValueError")["str"]


@parametrize("newest")
def test_lifetimes_newest(got: Got) -> None:
    """idle_ttl_seconds and delete_after_stop_seconds on create and update; 0 clears (§9.1)."""
    lt = got["lifetimes"]
    assert lt["made"] == [600, 120, None]
    assert lt["changed"] == [None, 60]
    assert "multiple of 60" in error(lt["not_a_minute"], "ValueError")["str"]


@parametrize("start_stop")
def test_stop_and_start(got: Got) -> None:
    """stop: status stopped; the data plane answers NotReady naming start (template era) or
    resumes the sandbox (0.15); start: ready again with the file written before the stop; 404
    for a missing sandbox (§8)."""
    s = got["start_stop"]
    # 0.7.33 drops the data-plane URL locally; 0.15 keeps it (stable across stop/start).
    assert s["local"] == ["stopped", got.sdk.newest]
    assert s["status"] == "stopped" and s["fetched"] == ["stopped", True]
    if got.sdk.templates:  # template era: stays stopped until started
        assert "is stopped; start it first" in error(s["stale_read"], "SandboxNotReadyError")["str"]
        # The refused upgrade falls back to HTTP, which says NotReady.
        assert "is stopped" in error(s["stale_run"], "SandboxNotReadyError")["str"]
        assert s["after_stale"] == "stopped"
    else:  # 0.15, no template: its next data-plane call resumes it, as that SDK expects
        assert (s["stale_read"], s["stale_run"], s["after_stale"]) == (None, None, "ready")
    error(s["stop_missing"], "ResourceNotFoundError", resource_type="sandbox")
    error(s["start_missing"], "ResourceNotFoundError", resource_type="sandbox")
    assert s["after"] == ["ready", "kept\n", "up\n"]


@parametrize()
def test_service_url(got: Got) -> None:
    """client.service() (§2.3): all four fields, and svc.get() with the token header reaches a
    service bound to the sandbox's loopback; an unknown sandbox is ResourceNotFoundError."""
    s = got["service_url"]
    assert (s["status"], s["text"]) == (200, "service-ok\n")
    assert s["service_url"].endswith(f"/svc/{s['sandbox_id']}/8090/")
    assert s["browser_url"].endswith(f"/svc-auth/{s['sandbox_id']}/8090")
    assert s["token"] is True
    left = datetime.fromisoformat(s["expires_at"].replace("Z", "+00:00")) - datetime.now(UTC)
    assert 0 < left.total_seconds() <= 300
    error(s["missing"], "ResourceNotFoundError", resource_type="sandbox")


@parametrize()
def test_unimplemented_features_name_themselves(got: Got) -> None:
    """Volumes and pools answer 501 naming the feature: a SandboxClientError, never a
    ResourceNotFoundError (§2.4, §2.5)."""
    u = got["unimplemented"]
    features: dict[str, str] = {}
    if got.sdk.templates:
        features |= {
            "create_volume": "Volumes",
            "list_volumes": "Volumes",
            "create_pool": "Pools",
            "list_pools": "Pools",
        }
    assert set(u) == set(features)
    for key, feature in features.items():
        assert error(u[key], "SandboxClientError")["str"].startswith(feature), u[key]


@parametrize()
def test_creation_error_mappings(got: Got) -> None:
    """Every creation error hutch can produce maps as the spec says (§2.0, §2.2): 409 duplicate,
    422 validation and image pull, 404 template, 408 not ready in time, 401 on both planes.
    (hutch has no quotas, so no 429; it never answers 502/503 for a create.)"""
    e = got["create_errors"]
    assert "already exists" in error(e["duplicate_name"], "SandboxClientError")["str"]
    bad_name = error(e["bad_name"], "ResourceCreationError", error_type="ValidationError")
    assert "not a valid name" in bad_name["str"]
    error(e["unauthorized_list"], "SandboxAuthenticationError")
    error(e["unauthorized_create"], "SandboxAuthenticationError")
    # §1.3: a 401 from the data plane is a plain SandboxClientError.
    assert "API key" in error(e["unauthorized_dataplane"], "SandboxClientError")["str"]
    if got.sdk.templates:
        error(e["unknown_template"], "ResourceNotFoundError", resource_type=None)
        error(e["image_pull"], "ResourceCreationError", error_type="ImagePull")
        slow = error(e["not_ready_in_time"], "ResourceTimeoutError", resource_type="sandbox")
        assert "not ready after 0s" in slow["str"]
    else:
        assert "proxy" in error(e["proxy_config"], "SandboxClientError")["str"]


# -- data plane ----------------------------------------------------------------------------------


@parametrize()
def test_run(got: Got) -> None:
    """stdout, stderr and a non-zero exit code; over WebSocket when installed, else HTTP."""
    assert got["run"] == ["hello\n", "oops\n", 3, False]
    if got.sdk.fallback:  # nothing fell back to HTTP (outside the refused-upgrade check)
        assert got["http_runs"]["direct"] == []
    elif got.sdk.http:
        assert "echo hello; echo oops >&2; exit 3" in got["http_runs"]["direct"]


@parametrize()
def test_env_cwd(got: Got) -> None:
    assert got["env_cwd"] == "1 ü\n/tmp\n"


@parametrize()
def test_command_error(got: Got) -> None:
    """A working directory that does not exist: SandboxOperationError(CommandError)."""
    e = error(got["command_error"], "SandboxOperationError", error_type="CommandError")
    assert e["operation"] == "command" and "/no/such/dir" in e["str"]


@parametrize()
def test_write_read(got: Got) -> None:
    """write (str and bytes, absolute and relative) and read; missing file, directories (§3)."""
    f = got["files"]
    assert f["text"] == "hi ü\n" and f["via_run"] == "hi ü\n"
    assert f["binary_ok"] and f["relative_home"] == "y\n"
    error(f["missing"], "ResourceNotFoundError", resource_type="file")
    error(f["read_dir"], "SandboxOperationError", error_type="ReadError", operation="read")
    error(f["write_dir"], "SandboxOperationError", error_type="WriteError", operation="write")


@parametrize("ws")
def test_timeout_over_websocket(got: Got) -> None:
    t = error(got["timeout"], "CommandTimeoutError")
    assert t["str"] == "Command timed out after 1 seconds [CommandTimeout]"
    assert t["seconds"] < 4


@parametrize("http")
def test_timeout_over_http(got: Got) -> None:
    """Over POST /execute a timeout is exit code 124 with the output so far (§5)."""
    t = got["timeout"]
    assert t["result"] == ["part\n", 124] and t["seconds"] < 4


@parametrize("http")
def test_without_websockets(got: Got) -> None:
    """wait=False, callbacks and tunnels need websockets: ImportError, as the SDK says (§5)."""
    n = got["no_websockets"]
    for key in ("wait_false", "callbacks", "tunnel"):
        assert "websockets" in error(n[key], "ImportError")["str"]


@parametrize("ws")
def test_prompt_close_after_exit(got: Got) -> None:
    assert got["round_trip"] < 1.0, f"median run('true') took {got['round_trip']}s"


@parametrize("ws")
def test_callbacks_stream_live(got: Got) -> None:
    cb = got["callbacks"]
    assert cb["result"] == ["a\nc\n", "b\n", 0]
    assert "".join(d for d, _ in cb["stdout"]) == "a\nc\n"
    assert "".join(d for d, _ in cb["stderr"]) == "b\n"
    first, last = cb["stdout"][0], cb["stdout"][-1]  # "a" arrived while the command slept
    assert first[0].startswith("a") and last[1] - first[1] >= 0.3


@parametrize("ws")
def test_wait_false_utf8_offsets(got: Got) -> None:
    u = got["utf8_offsets"]
    assert isinstance(u["pid"], int) and len(u["command_id"]) == 32
    assert u["result"] == ["a\nü€😀\n", "z\n", 0]
    assert contiguous(u["chunks"]), u["chunks"]
    # ü is 2 bytes, € 3 and 😀 4: after "a\n" (2) and "ü€😀\n" (10) stdout is at byte 12.
    assert next(c for c in u["chunks"] if c[1].startswith("ü"))[2] == 2
    assert u["last"] == [12, 2]
    if got.sdk.newest:  # 0.15 sends its own uuid7 id and keeps it
        assert u["command_id"][12] == "7"


@parametrize("ws")
def test_stdin(got: Got) -> None:
    assert got["stdin"] == ["got:wörld\n", 0]


@parametrize("ws")
def test_kill_then_reconnect_shows_137(got: Got) -> None:
    """kill(): the iterator raises a connection error (no auto-reconnect); a reconnect shows
    the output so far and exit 137 (§4.4)."""
    k = got["kill"]
    assert k["first"] == ["stdout", "ready\n"]
    assert k["raised"] is not None and k["raised"]["connection_error"], k["raised"]
    assert "closed unexpectedly" in k["raised"]["str"]
    assert k["after"] == ["ready\n", 137] and k["seconds"] < 5


@parametrize("ws")
def test_reconnect_with_offsets(got: Got) -> None:
    r = got["reconnect_offsets"]
    assert r["done"] == ["ü€😀", "XY", 0]
    assert r["tail"] == ["€😀", "XY", 0]  # stdout from byte 2: only "€😀"
    assert next(c for c in r["tail_chunks"] if c[0] == "stdout")[2] == 2
    assert r["full"] == ["ü€😀", "XY", 0]
    assert r["end"] == ["", "Y", 0]


@parametrize("ws")
def test_reconnect_errors(got: Got) -> None:
    """An id never seen: CommandNotFound; a finished session past its ttl: SessionExpired."""
    e = error(got["unknown_command"], "SandboxOperationError", error_type="CommandNotFound")
    assert e["operation"] == "reconnect"
    assert e["str"] == f"Command not found: {'0' * 32} [CommandNotFound]"
    s = got["session_expired"]
    e = error(s["error"], "SandboxOperationError", error_type="SessionExpired")
    assert e["str"] == f"Session expired: {s['command_id']} [SessionExpired]"


@parametrize("ws")
def test_auto_resume_after_abnormal_close(got: Got) -> None:
    """The connection is reset mid-message; the SDK reconnects on its own from its offsets and
    gets every byte exactly once (§4.7)."""
    a = got["auto_resume"]
    seq = "".join(f"a{i}\n" for i in range(1, 151)) + "".join(f"b{i}\n" for i in range(1, 151))
    assert a["result"] == ["first\n" + seq, "".join(f"e{i}\n" for i in range(1, 21)), 0]
    assert (a["cuts"], a["connections"]) == (1, 2)
    assert contiguous(a["chunks"]), a["chunks"]
    # The second connection resumed after "first\n", not from 0.
    assert [c[2] for c in a["chunks"] if c[0] == "stdout"][:2] == [0, 6]


@parametrize("ws")
def test_pty(got: Got) -> None:
    # stdout and stderr share the terminal: both arrive as stdout, with CRLF line ends.
    assert got["pty"] == ["tty\r\nerr\r\n", "", 0]


@parametrize("ws")
def test_3mb_stream(got: Got) -> None:
    b = got["big_stream"]
    assert b["bytes"] == 3_000_000 and b["identical"] and b["contiguous"], b
    assert b["exit_code"] == 0
    # Well under the client's 1 MiB message limit (§4.1), so it arrives in many messages.
    assert b["max_chunk"] <= 64 * 1024 and b["chunks"] >= 3_000_000 // (64 * 1024), b


@parametrize("ws")
def test_refused_upgrade(got: Got) -> None:
    """Upgrades refused with 403: run() falls back to HTTP in the template era (0.15 has no
    fallback); wait=False raises SandboxConnectionError (§4.6, §9.1)."""
    u = got["upgrade_403"]
    if got.sdk.templates:
        assert u["run"] == ["via-http\n", 4]
        assert got["http_runs"]["proxied"] == ["echo via-http; exit 4"]
    else:
        assert "(HTTP 403)" in error(u["run"], "SandboxConnectionError")["str"]
    wait_false = error(u["wait_false"], "SandboxConnectionError")
    assert "WebSocket upgrade rejected by server (HTTP 403)" in wait_false["str"]


@parametrize("ws")
def test_tunnel(got: Got) -> None:
    """sb.tunnel(): HTTP to a loopback-only service, two tunnels with three concurrent 3 MiB
    echoes, a refused port closing the local connection, local_port=0 mirroring the remote
    port (§6)."""
    t = got["tunnel"]
    assert t["http_body"] == f"{t['name']}\n" == t["second_tunnel_body"]
    assert t["echo_ok"] == [True, True, True]
    assert t["refused_read"] == ""
    assert "nothing listening on port 7999" in got.data["stderr"]
    assert t["mirror"] == [True, [True]]


@parametrize()
def test_async_client(got: Got) -> None:
    """AsyncSandboxClient: the context manager, run, write/read and delete on exit."""
    a = got["async_client"]
    assert a["run"] == ["async\n", "e\n", 2] and a["read"] == "ä"
    error(a["deleted"], "ResourceNotFoundError", resource_type="sandbox")


# -- the newest SDK's exec deltas (§9.1) ------------------------------------------------------


@parametrize("newest")
def test_reissued_execute_attaches_instead_of_spawning(got: Got) -> None:
    g = got["get_or_create"]
    started = {"type": "started", "command_id": g["command_id"], "pid": g["started"]["pid"]}
    assert g["started"] == started
    tail = [{"type": "stdout", "data": "done\n", "offset": 0}, {"type": "exit", "exit_code": 0}]
    # Re-issued while running (after the first socket dropped) and after it finished: the same
    # process (same pid), its whole output once, and the command ran once.
    assert g["again"] == [started, *tail] and g["after"] == [started, *tail]
    assert g["file"] == "line\n", "the command ran more than once"


@parametrize("newest")
def test_concurrent_execute_same_id_spawns_once(got: Got) -> None:
    p = got["parallel_get_or_create"]
    a, b = p["results"]
    assert a is not None and a == b, p["results"]
    assert [m["type"] for m in a] == ["started", "stdout", "exit"]
    assert p["file"] == "line\n", "the command ran more than once"


@parametrize("newest")
def test_close_stdin_and_started_on_reconnect(got: Got) -> None:
    """close_stdin is the default; close_input() sends the message; a reconnect is acknowledged
    with `started` (same id and pid) before any output."""
    c = got["close_stdin"]
    assert c["default"]["result"] == ["done\n", 0] and c["default"]["seconds"] < 5
    assert c["message"]["result"] == ["abc\neof\n", 0] and c["message"]["seconds"] < 5
    assert c["raw"] == [
        {"type": "started", "command_id": c["cid"], "pid": c["pid"]},
        {"type": "stdout", "data": "eof\n", "offset": 4},
        {"type": "exit", "exit_code": 0},
    ]
