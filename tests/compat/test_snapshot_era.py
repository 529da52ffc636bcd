"""The snapshot-era ``langsmith`` SDKs work against a hutch server unchanged: the newest of each
release line from 0.7.38 to 0.15.x (and 0.7.33, the first with snapshots) build a snapshot from an
image, boot from it, run and stream, write and read, capture and boot from the capture, stop and
start, look snapshots up by id, name and tag, get the error types their README names, and delete
a snapshot in use without breaking its sandboxes. The newest SDK also waits for an idle stop.

``snapshot_flow.py`` runs once per SDK in that SDK's own virtualenv, two at a time (the newest
SDK's flow, which waits a minute for its idle stop, first); each test asserts one step for every
SDK, and its id names the SDK (``test_capture_and_boot[langsmith-0.9.8]``).

Every line runs with ``websockets`` installed. Whether it can run without is the wheel's
METADATA: only where ``websockets`` is the ``sandbox`` extra (``Requires-Dist: websockets>=15.0;
extra == 'sandbox'``), 0.7.33 and 0.7.38, does each line also run in a virtualenv without it
(ids such as ``langsmith-0.7.33-http``). From 0.8 on ``websockets>=15.0`` is a plain requirement, so
"without" cannot be installed: 0.8.18, 0.9.8, 0.10.18, 0.11.2, 0.12.6, 0.13.0, 0.14.17 and
0.15.1 run with it only (``test_transport`` checks this against each venv's metadata). Without
``websockets`` every HTTP step passes with the same asserts, ``run()`` goes over ``POST
/execute``, and callbacks, ``wait=False``, ``reconnect`` and tunnels raise the SDK's ImportError
(0.7.x has no service-URL WebSocket and no SSE).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.compat._venvs import NEWEST_015, langsmith_python
from tests.conftest import Server

pytestmark = pytest.mark.root
HERE = Path(__file__).parent
IMAGE = "local/busybox"
#: The newest release of each line on PyPI when the suite was last updated.
LINES = [
    "0.7.33",
    "0.7.38",
    "0.8.18",
    "0.9.8",
    "0.10.18",
    "0.11.2",
    "0.12.6",
    "0.13.0",
    "0.14.17",
    NEWEST_015,
]
#: The lines whose wheel has ``websockets`` only as the ``sandbox`` extra: these also run without.
WITHOUT_WEBSOCKETS = ["0.7.33", "0.7.38"]
#: ``(version, websockets)``: every line with websockets, the lines that allow it without.
PARAMS = [pytest.param((v, True), id=f"langsmith-{v}") for v in LINES] + [
    pytest.param((v, False), id=f"langsmith-{v}-http") for v in WITHOUT_WEBSOCKETS
]
Run = tuple[str, bool]
#: What the SDKs of 0.7.x raise for what needs a WebSocket when ``websockets`` is not installed.
WS_EXEC_NEEDED = (
    "WebSocket-based execution requires the 'websockets' package. "
    "Install it with: pip install 'langsmith[sandbox]'"
)
WS_TUNNEL_NEEDED = (
    "TCP tunnel requires the 'websockets' package. "
    "Install it with: pip install 'langsmith[sandbox]'"
)


def prefix(run: Run) -> str:
    """Names of one run's snapshots; no run's prefix is part of another's (list filters)."""
    version, websockets = run
    return f"snap{version.replace('.', '')}-{'ws' if websockets else 'http'}"


def _run(server: Server, run: Run) -> dict[str, Any]:
    version, websockets = run
    args = {
        "url": server.url,
        "key": server.key,
        "prefix": prefix(run),
        "image": IMAGE,
        "idle": version == NEWEST_015,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANGSMITH_")}
    proc = subprocess.run(
        [
            str(langsmith_python(version, websockets=websockets)),
            str(HERE / "snapshot_flow.py"),
            json.dumps(args),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data["sdk"] == version, data["sdk"]
    assert data["mode"] == ("ws" if websockets else "http"), data["mode"]
    return data


Flows = Callable[[Run], dict[str, Any]]
#: The flow that waits a minute for an idle stop: started first so the others run beside it.
IDLE_RUN: Run = (NEWEST_015, True)
#: Flows at once: each is a subprocess mostly waiting on the server (two cores on CI).
PARALLEL_FLOWS = 2


def _selected_runs(items: list[pytest.Item]) -> list[Run]:
    """The runs the selected tests ask for (so ``-k`` runs only those flows), the idle one
    first."""
    runs: list[Run] = []
    for item in items:
        if not isinstance(item, pytest.Function) or item.module.__name__ != __name__:
            continue
        run = item.callspec.params.get("run") if hasattr(item, "callspec") else None
        if run is not None and run not in runs:
            runs.append(run)
    return sorted(runs, key=lambda r: r != IDLE_RUN)


@pytest.fixture(scope="session")
def flows(request: pytest.FixtureRequest, compat_server: Server) -> Iterator[Flows]:
    pool = ThreadPoolExecutor(PARALLEL_FLOWS, thread_name_prefix="snapshot-flow")
    futures: dict[Run, Future[dict[str, Any]]] = {
        run: pool.submit(_run, compat_server, run) for run in _selected_runs(request.session.items)
    }

    def get(run: Run) -> dict[str, Any]:
        if run not in futures:
            futures[run] = pool.submit(_run, compat_server, run)
        return futures[run].result()

    try:
        yield get
    finally:
        # Flows not started yet are dropped; running ones end by their own 300 s timeout.
        pool.shutdown(wait=True, cancel_futures=True)


def step(data: dict[str, Any], name: str) -> Any:
    assert name in data, f"the flow did not run {name!r}"
    value = data[name]
    assert not (isinstance(value, dict) and "unexpected" in value), value["unexpected"]
    return value


@pytest.mark.parametrize("run", PARAMS)
def test_build_from_image(flows: Flows, run: Run) -> None:
    """create_snapshot from an image returns it ready, with digest, capacity and (where the SDK
    sends them) its tag and run_config."""
    b = step(flows(run), "build")
    assert b["status"] == "ready" and b["image_digest"].startswith("sha256:")
    assert b["fs_capacity_bytes"] == 1 << 30 and b["source_sandbox_id"] is None
    if "tag" in b["kw"]:
        assert b["tags"] == ["v1"]
    if "run_config" in b["kw"]:
        assert b["run_config"] == {"env_vars": {"SNAP": "yes"}, "work_dir": "/tmp"}


@pytest.mark.parametrize("run", PARAMS)
def test_boot_run_stream_files(flows: Flows, run: Run) -> None:
    """A sandbox from the snapshot runs commands (with the snapshot's run_config where sent),
    writes and reads files; with websockets it streams output and reconnects to a command by
    id, without them those raise the SDK's ImportError and nothing is streamed."""
    data = flows(run)
    r = step(data, "boot_and_run")
    with_rc = "run_config" in step(data, "build")["kw"]
    assert r["stdout"] == ("hi\nyes\n/tmp\n" if with_rc else "hi\nunset\n/home/user\n")
    assert r["exit_code"] == 0 and r["read"] == "captured\n"
    if run[1]:
        assert r["streamed"] == "1\n2\n3\n" and r["streamed_exit"] == 0
        assert r["reconnected"] == ["later\n", 3]
        return
    for key in ("streamed", "wait_false", "reconnect"):
        assert r[key] == {"type": "ImportError", "str": WS_EXEC_NEEDED, "resource_type": None}
    assert r["tunnel"] == {"type": "ImportError", "str": WS_TUNNEL_NEEDED, "resource_type": None}
    assert r["seen"] == []


@pytest.mark.parametrize("run", PARAMS)
def test_transport(flows: Flows, run: Run) -> None:
    """The flow ran in the mode asked for; the lines without it require websockets in their
    metadata (so they cannot run without); run() used HTTP POST /execute exactly when
    websockets is missing."""
    version, websockets = run
    t = step(flows(run), "transport")
    assert t["mode"] == ("ws" if websockets else "http")
    assert t["websockets_required"] == (version not in WITHOUT_WEBSOCKETS)
    if websockets:
        assert t["http_runs"] in ([], "n/a"), "run() fell back to HTTP with websockets installed"
    else:
        # The flow's two plain run()s: the boot check and starting httpd for the service URL.
        assert len(t["http_runs"]) == 2 and t["http_runs"][0].startswith("echo hi;")


@pytest.mark.parametrize("run", PARAMS)
def test_per_command_run_config(flows: Flows, run: Run) -> None:
    """SDKs that send run_config with a command (0.13+) get its env_vars and work_dir."""
    got = step(flows(run), "per_command_run_config")
    assert got in ("n/a", "c\n/\n")
    if _at_least(run[0], 0, 13):
        assert got == "c\n/\n"


def _at_least(version: str, *minimum: int) -> bool:
    return tuple(map(int, version.split("."))) >= minimum


@pytest.mark.parametrize("run", PARAMS)
def test_data_plane_extras(flows: Flows, run: Run) -> None:
    """Service URL GET (the HTTP helper every line has), download links (0.11+), stat, read_range,
    ls, glob and grep (0.13+) and SSE exec (0.13+, with the SDK's feature setting) all work."""
    version = run[0]
    x = step(flows(run), "data_plane_extras")
    assert x["service"] == [200, "page\n"]
    if _at_least(version, 0, 11):
        assert x["download_url"] == "captured\n"
    if _at_least(version, 0, 13):
        assert (x["stat"], x["read_range"]) == (9, "capt")
        assert x["ls"] == ["kept.txt"] and x["glob"] == ["/data/kept.txt"]
        assert x["grep"] == [["/data/kept.txt", 1, "captured"]]
        assert x["sse"] == {"selected": True, "out": ["over-sse\n", "err\n", 4]}


@pytest.mark.parametrize("run", PARAMS)
def test_capture_and_boot(flows: Flows, run: Run) -> None:
    """capture_snapshot keeps the sandbox's files (not later writes); a sandbox booted from it by
    name reads them."""
    c = step(flows(run), "capture_and_boot")
    assert c["status"] == "ready" and c["source_is_sb"] and c["seconds"] < 10
    assert c["child_reads"] == "captured\n" and c["parent_reads"] == "after\n"


@pytest.mark.parametrize("run", PARAMS)
def test_stop_start_keeps_files(flows: Flows, run: Run) -> None:
    """stop then start: status stopped, then ready, files kept."""
    s = step(flows(run), "stop_start")
    assert (s["stopped"], s["after"], s["read"]) == ("stopped", "ready", "captured\n")


@pytest.mark.parametrize("run", PARAMS)
def test_lookups(flows: Flows, run: Run) -> None:
    """get_snapshot, list_snapshots (name_contains where the SDK has it), list_snapshot_tags and
    name:tag references (0.12+)."""
    p = prefix(run)
    lk = step(flows(run), "lookups")
    assert lk["get"] == f"{p}-base" and lk["listed"]
    if "filtered" in lk:
        assert lk["filtered"] == [f"{p}-base", f"{p}-cap"]
    if "tags" in lk:
        assert lk["tags"] == [["v1", True]] and lk["by_ref"]


@pytest.mark.parametrize("run", PARAMS)
def test_error_types(flows: Flows, run: Run) -> None:
    """An unknown snapshot on create and on get, and capturing an unknown sandbox, raise the
    SDK's not-found errors."""
    e = step(flows(run), "errors")
    assert e["get_unknown"]["type"] == "ResourceNotFoundError"
    assert e["get_unknown"]["resource_type"] == "snapshot"
    assert e["capture_unknown_sandbox"]["type"] == "ResourceNotFoundError"
    unknown = e["unknown_snapshot"]
    assert unknown is not None and "not found" in unknown["str"]


@pytest.mark.parametrize("run", PARAMS)
def test_delete_in_use(flows: Flows, run: Run) -> None:
    """Deleting a snapshot a sandbox booted from leaves the sandbox's files; the snapshot is
    gone."""
    d = step(flows(run), "delete_in_use")
    assert d["child_still_reads"] == "captured\n"
    assert d["get_after"]["type"] == "ResourceNotFoundError"
    assert step(flows(run), "cleanup") is True


@pytest.mark.parametrize("run", [pytest.param(IDLE_RUN, id=f"langsmith-{NEWEST_015}")])
def test_idle_stop_of_the_newest_sdk(flows: Flows, run: Run) -> None:
    """A sandbox of the newest SDK with idle_ttl_seconds=60 is stopped (not deleted) once idle."""
    idle = step(flows(run), "idle_stop")
    assert idle == {"status": "stopped", "idle_ttl_seconds": 60}
