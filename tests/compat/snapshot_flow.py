"""Runs inside a virtualenv holding one snapshot-era ``langsmith`` SDK (0.7.33 and 0.7.38 to the
newest): its README's flows against a hutch server, as far as that SDK has them.

What applies is read off the SDK (its methods and their parameters, and whether ``websockets``
is installed), never from its version number, and every observation names the SDK and the mode
it came from: ``"ws"`` with ``websockets`` installed, ``"http"`` without it (only 0.7.x allows
that). Without it, ``run()`` falls back to HTTP ``POST /execute`` and what needs a WebSocket
(callbacks, ``wait=False``, ``reconnect``, tunnels) raises the SDK's ImportError.

Argument: a JSON object ``{"url": <server>, "key": <API key>, "prefix": <name prefix>, "image":
<image>, "idle": <bool: also wait for an idle stop>}``. Prints one JSON object, one key per
step; a step that raises records ``{"unexpected": "<Type>: <msg>"}`` so one failure does not
hide the others.
"""

import importlib.metadata
import importlib.util
import inspect
import json
import os
import sys
import time
import uuid

from langsmith.sandbox import SandboxClient

ARGS = json.loads(sys.argv[1])
P, IMAGE = ARGS["prefix"], ARGS["image"]
CLIENT = SandboxClient(api_endpoint=ARGS["url"] + "/api/v2/sandboxes", api_key=ARGS["key"])
MODE = "ws" if importlib.util.find_spec("websockets") is not None else "http"
OUT = {"sdk": importlib.metadata.version("langsmith"), "mode": MODE}
STATE = {}
#: Commands of the flow's sandbox that went over HTTP ``POST /execute`` (SDKs that have it).
HTTP_RUNS = []


def takes(fn, name):
    return name in inspect.signature(fn).parameters


def error_of(exc):
    return {
        "type": type(exc).__name__,
        "str": str(exc),
        "resource_type": getattr(exc, "resource_type", None),
    }


def raises(fn):
    try:
        fn()
    except Exception as exc:
        return error_of(exc)
    return None


def step(fn):
    try:
        OUT[fn.__name__] = fn(CLIENT)
    except Exception as exc:
        OUT[fn.__name__] = {"unexpected": f"{type(exc).__name__}: {exc}"}
    return fn


def spy_http(sb):
    """Record each HTTP ``/execute`` run of ``sb`` in HTTP_RUNS (the call still goes through)."""
    real = sb._run_http

    def spy(command, **kwargs):
        HTTP_RUNS.append(command)
        return real(command, **kwargs)

    sb._run_http = spy


def by_name(fn, ref, snapshot_id):
    """Call ``fn`` with a snapshot name: ``snapshot=`` where the SDK has it, else the older
    ``snapshot_name=``, else (0.7.33, ids only) with the id."""
    if takes(fn, "snapshot"):
        return fn(snapshot=ref)
    if takes(fn, "snapshot_name"):
        return fn(snapshot_name=ref)
    return fn(snapshot_id=snapshot_id)


def snap_facts(s):
    rc = getattr(s, "run_config", None)
    return {
        "id": s.id,
        "name": s.name,
        "status": s.status,
        "tags": list(getattr(s, "tags", []) or []),
        "image_digest": s.image_digest,
        "fs_capacity_bytes": s.fs_capacity_bytes,
        "source_sandbox_id": s.source_sandbox_id,
        "run_config": None if rc is None else {"env_vars": rc.env_vars, "work_dir": rc.work_dir},
    }


if ARGS.get("idle"):
    # Made first, checked last: the flow's own steps run while its idle TTL counts down.
    IDLE = CLIENT.create_sandbox(name=f"{P}-idle", idle_ttl_seconds=60)


@step
def build(c):
    kw = {}
    if takes(c.create_snapshot, "tag"):
        kw["tag"] = "v1"
    if takes(c.create_snapshot, "run_config"):
        kw["run_config"] = {"env_vars": {"SNAP": "yes"}, "work_dir": "/tmp"}
    t0 = time.monotonic()
    snap = c.create_snapshot(f"{P}-base", IMAGE, 1 << 30, **kw)
    STATE["base"] = snap
    return {**snap_facts(snap), "seconds": time.monotonic() - t0, "kw": sorted(kw)}


@step
def boot_and_run(c):
    sb = c.create_sandbox(snapshot_id=STATE["base"].id)
    STATE["sb"] = sb
    if hasattr(sb, "_run_http"):
        spy_http(sb)
    res = sb.run("echo hi; echo ${SNAP:-unset}; pwd")
    sb.write("/data/kept.txt", "captured\n")
    out = {
        "snapshot_id": getattr(sb, "snapshot_id", None),
        "stdout": res.stdout,
        "exit_code": res.exit_code,
        "read": sb.read("/data/kept.txt").decode(),
    }
    seen = []
    if MODE == "http":
        # Each of these needs a WebSocket; the SDK refuses before sending anything.
        out["streamed"] = raises(lambda: sb.run("echo 1", on_stdout=seen.append))
        out["seen"] = seen
        out["wait_false"] = raises(lambda: sb.run("echo later; exit 3", wait=False))
        out["reconnect"] = raises(lambda: sb.reconnect(str(uuid.uuid4())))
        out["tunnel"] = raises(lambda: sb.tunnel(remote_port=8090, local_port=0).close())
        return out
    streamed = sb.run("for i in 1 2 3; do echo $i; done", on_stdout=seen.append)
    handle = sb.run("echo later; exit 3", wait=False)
    again = sb.reconnect(handle.command_id)
    out["streamed"] = "".join(seen)
    out["streamed_exit"] = streamed.exit_code
    out["reconnected"] = [again.result.stdout, again.result.exit_code]
    return out


@step
def per_command_run_config(c):
    sb = STATE["sb"]
    if not takes(sb.run, "run_config"):
        return "n/a"
    return sb.run("echo $CMD; pwd", run_config={"env_vars": {"CMD": "c"}, "work_dir": "/"}).stdout


SSE_CHILD = """
import json, sys
from langsmith import _features
from langsmith.sandbox import SandboxClient, _sse_execute
url, key, name = sys.argv[1:4]
sb = SandboxClient(api_endpoint=url + "/api/v2/sandboxes", api_key=key).get_sandbox(name)
r = sb.run("echo over-sse; echo err >&2; exit 4")
print(json.dumps({"selected": _sse_execute.sse_transport_selected(),
                  "out": [r.stdout, r.stderr, r.exit_code]}))
"""


@step
def data_plane_extras(c):
    """Service URLs, download links, stat/read_range/ls/glob/grep and SSE, where the SDK has
    them (read off its methods)."""
    sb = STATE["sb"]
    out = {}
    sb.run("mkdir -p /www && echo page > /www/index.html && httpd -p 127.0.0.1:8090 -h /www")
    svc = c.service(sb.name, 8090)
    if hasattr(svc, "get"):
        r = svc.get("/index.html")
        out["service"] = [r.status_code, r.text]
    else:
        out["service"] = "n/a"
    if hasattr(sb, "generate_download_url"):
        import urllib.request

        link = sb.generate_download_url("/data/kept.txt")
        with urllib.request.urlopen(link.download_url, timeout=30) as resp:
            out["download_url"] = resp.read().decode()
    if hasattr(sb, "stat"):
        out["stat"] = sb.stat("/data/kept.txt").size_bytes
        out["read_range"] = sb.read_range("/data/kept.txt", start=0, end=3).content.decode()
        out["ls"] = sorted(f.path.rsplit("/", 1)[-1] for f in sb.ls("/data"))
        out["glob"] = sorted(f.path for f in sb.glob("*.txt", "/data").matches)
        out["grep"] = [[m.path, m.line, m.text] for m in sb.grep("capt", "/data").matches]
    try:
        from langsmith import _features
        from langsmith.sandbox import _sse_execute  # noqa: F401
    except ImportError:
        return out
    hint = _features.setting_hint(_features.SANDBOX_SSE_EXEC)
    var, _, value = hint.partition("=")
    import subprocess

    child = subprocess.run(
        [sys.executable, "-c", SSE_CHILD, ARGS["url"], ARGS["key"], sb.name],
        env={**os.environ, var: value},
        capture_output=True,
        text=True,
        timeout=120,
    )
    out["sse"] = json.loads(child.stdout) if child.returncode == 0 else child.stderr[-2000:]
    return out


@step
def capture_and_boot(c):
    sb = STATE["sb"]
    t0 = time.monotonic()
    snap = c.capture_snapshot(sb.name, f"{P}-cap")
    seconds = time.monotonic() - t0
    STATE["cap"] = snap
    sb.write("/data/kept.txt", "after\n")
    child = by_name(c.create_sandbox, f"{P}-cap", snap.id)
    STATE["child"] = child
    return {
        **snap_facts(snap),
        "seconds": seconds,
        "source_is_sb": snap.source_sandbox_id == sb.id,
        "child_reads": child.read("/data/kept.txt").decode(),
        "parent_reads": sb.read("/data/kept.txt").decode(),
    }


@step
def stop_start(c):
    child = STATE["child"]
    child.stop()
    stopped = c.get_sandbox(child.name).status
    child.start()
    return {
        "stopped": stopped,
        "after": c.get_sandbox(child.name).status,
        "read": child.read("/data/kept.txt").decode(),
    }


@step
def lookups(c):
    base = STATE["base"]
    out = {
        "get": c.get_snapshot(base.id).name,
        "listed": f"{P}-base" in [s.name for s in c.list_snapshots()],
    }
    if takes(c.list_snapshots, "name_contains"):
        out["filtered"] = sorted(s.name for s in c.list_snapshots(name_contains=P))
    if hasattr(c, "list_snapshot_tags"):
        out["tags"] = [[t.tag, t.snapshot_id == base.id] for t in c.list_snapshot_tags(f"{P}-base")]
        out["by_ref"] = c.get_snapshot(f"{P}-base:v1").id == base.id
    return out


@step
def errors(c):
    return {
        "unknown_snapshot": raises(lambda: c.create_sandbox(snapshot_id=str(uuid.uuid4()))),
        "get_unknown": raises(lambda: c.get_snapshot(str(uuid.uuid4()))),
        "capture_unknown_sandbox": raises(lambda: c.capture_snapshot(f"{P}-nope", "x")),
    }


@step
def delete_in_use(c):
    cap = STATE["cap"]
    c.delete_snapshot(cap.id)
    return {
        "child_still_reads": STATE["child"].read("/data/kept.txt").decode(),
        "get_after": raises(lambda: c.get_snapshot(cap.id)),
    }


@step
def cleanup(c):
    for key in ("sb", "child"):
        c.delete_sandbox(STATE[key].name)
    c.delete_snapshot(STATE["base"].id)
    return True


if ARGS.get("idle"):

    @step
    def idle_stop(c):
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline:
            status = c.get_sandbox(IDLE.name).status
            if status == "stopped":
                break
            time.sleep(1)
        c.delete_sandbox(IDLE.name)
        return {"status": status, "idle_ttl_seconds": IDLE.idle_ttl_seconds}


@step
def transport(c):
    """The mode, whether the installed SDK requires ``websockets`` (not only as an extra), and
    which commands went over HTTP ``/execute``."""
    requires = importlib.metadata.requires("langsmith") or []
    return {
        "mode": MODE,
        "websockets_required": any(
            r.startswith("websockets") and "extra ==" not in r for r in requires
        ),
        "http_runs": HTTP_RUNS if hasattr(STATE.get("sb"), "_run_http") else "n/a",
    }


print(json.dumps(OUT, default=str))
sys.stdout.flush()
os._exit(0)
