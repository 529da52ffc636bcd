"""Runs inside a venv with the public langsmith 0.15.x SDK: its core exec flow against an
existing sandbox (0.15 has no templates, so the caller creates it) — spec §9.1.

``get_sandbox``, ``run`` (client-supplied ``command_id``; a re-issued execute with the same id
attaches instead of spawning twice), ``close_stdin`` (the default) and ``close_input=False`` +
``send_input`` / ``close_input()``, ``wait=False`` iteration with UTF-8 offsets, reconnect with
offsets (and ``started`` as the re-attach acknowledgement), kill, timeout, write/read, delete.

Argument: sandbox name. Reads LANGSMITH_ENDPOINT (the caller sets it to ``<server>/api``, which
0.15 strips before appending ``/api/v2/sandboxes``) and LANGSMITH_API_KEY; prints one JSON
object of observations, one key per check. A check that raises records
``{"unexpected": "<Type>: <msg>"}`` instead, so one failure does not hide the others.
"""

import json
import os
import sys
import threading
import time
import uuid

from langsmith.sandbox import (
    CommandTimeoutError,
    ResourceNotFoundError,
    SandboxClient,
    SandboxConnectionError,
    SandboxOperationError,
)
from langsmith.sandbox._ws_execute import reconnect_ws_stream, run_ws_stream

name = sys.argv[1]
API_KEY = os.environ["LANGSMITH_API_KEY"]
out = {}
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def chunks_of(handle):
    return [[c.stream, c.data, c.offset] for c in handle]


def error_of(exc):
    return {
        "type": type(exc).__name__,
        "connection_error": isinstance(exc, SandboxConnectionError),
        "str": str(exc),
        "error_type": getattr(exc, "error_type", None),
        "operation": getattr(exc, "operation", None),
    }


@check
def run(sb):
    r = sb.run("echo hello; echo oops >&2; exit 3")
    return [r.stdout, r.stderr, r.exit_code, r.success]


@check
def round_trip(sb):
    """Five ``run("true")``: 0.15 closes with a 0.01 s timeout and reconnects on any close
    before ``exit``, so the server must close right after ``exit``."""
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        sb.run("true")
        times.append(time.monotonic() - t0)
    return sorted(times)[2]


@check
def get_or_create(sb):
    """The SDK's own ``run_ws_stream`` with one fixed ``command_id``, issued three times: the
    first socket is dropped right after ``started``, the second re-issues while the command
    runs, the third after it finished. One process, one line in the file."""
    cid = uuid.uuid4().hex
    cmd = "echo line >> /tmp/gc.txt; sleep 1; echo done"

    def issue():
        stream, _ = run_ws_stream(sb.dataplane_url, API_KEY, cmd, command_id=cid, close_stdin=True)
        return stream

    first = issue()
    started = next(first)
    first.close()  # the socket goes away before "exit"
    again = list(issue())
    after = list(issue())
    return {
        "command_id": cid,
        "started": started,
        "again": again,
        "after": after,
        "file": sb.run("cat /tmp/gc.txt").stdout,
    }


@check
def parallel_get_or_create(sb):
    """Two executes with one new ``command_id`` at the same moment: still one process."""
    cid = uuid.uuid4().hex
    cmd = "echo line >> /tmp/gc2.txt; echo done"
    results = [None, None]
    barrier = threading.Barrier(2)

    def issue(i):
        stream, _ = run_ws_stream(sb.dataplane_url, API_KEY, cmd, command_id=cid, close_stdin=True)
        barrier.wait()
        results[i] = list(stream)

    threads = [threading.Thread(target=issue, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return {"results": results, "file": sb.run("cat /tmp/gc2.txt").stdout}


@check
def close_stdin_default(sb):
    """``close_stdin: true`` is the default: ``cat`` reads EOF at once instead of waiting."""
    t0 = time.monotonic()
    r = sb.run("cat; echo done", timeout=20)
    return {"result": [r.stdout, r.exit_code], "seconds": time.monotonic() - t0}


@check
def stdin_open(sb):
    h = sb.run("read x; echo got:$x", close_input=False, timeout=10, wait=False)
    h.send_input("wörld\n")
    r = h.result
    return [r.stdout, r.exit_code]


@check
def close_input_message(sb):
    """``close_input=False``, some input, then the ``close_stdin`` message: ``cat`` ends."""
    t0 = time.monotonic()
    h = sb.run("cat; echo eof", close_input=False, timeout=20, wait=False)
    h.send_input("abc\n")
    h.close_input()
    r = h.result
    return {"result": [r.stdout, r.exit_code], "seconds": time.monotonic() - t0}


@check
def utf8_offsets(sb):
    h = sb.run(
        "printf 'a\\n'; sleep 0.2; printf 'ü€😀\\n'; sleep 0.2; printf 'z\\n' >&2",
        wait=False,
    )
    chunks = chunks_of(h)
    r = h.result
    return {
        "command_id": h.command_id,
        "pid": h.pid,
        "chunks": chunks,
        "last": [h.last_stdout_offset, h.last_stderr_offset],
        "result": [r.stdout, r.stderr, r.exit_code],
    }


@check
def reconnect_offsets(sb):
    h = sb.run("printf 'ü€😀'; printf 'XY' >&2", wait=False)
    done = h.result
    tail = sb.reconnect(h.command_id, stdout_offset=2)
    tail_chunks = chunks_of(tail)
    tail_result = tail.result
    full = sb.reconnect(h.command_id).result
    end = sb.reconnect(h.command_id, stdout_offset=9, stderr_offset=1).result
    raw, _ = reconnect_ws_stream(sb.dataplane_url, API_KEY, h.command_id, stdout_offset=9)
    return {
        "command_id": h.command_id,
        "pid": h.pid,
        "done": [done.stdout, done.stderr, done.exit_code],
        "tail_chunks": tail_chunks,
        "tail": [tail_result.stdout, tail_result.stderr, tail_result.exit_code],
        "full": [full.stdout, full.stderr, full.exit_code],
        "end": [end.stdout, end.stderr, end.exit_code],
        "raw": list(raw),
    }


@check
def unknown_command(sb):
    try:
        sb.reconnect("0" * 32).result  # noqa: B018 - the property drains the stream
    except SandboxOperationError as exc:
        return error_of(exc)
    return None


@check
def kill(sb):
    h = sb.run("echo ready; sleep 30", wait=False)
    it = iter(h)
    first = next(it)
    t0 = time.monotonic()
    h.kill()
    try:
        for _ in it:
            pass
        raised = None
    except Exception as exc:
        raised = error_of(exc)
    r = sb.reconnect(h.command_id).result
    return {
        "first": [first.stream, first.data],
        "raised": raised,
        "after": [r.stdout, r.exit_code],
        "seconds": time.monotonic() - t0,
    }


@check
def timeout(sb):
    t0 = time.monotonic()
    try:
        sb.run("sleep 5", timeout=1)
    except CommandTimeoutError as exc:
        return {**error_of(exc), "seconds": time.monotonic() - t0}
    return None


@check
def env_cwd(sb):
    return sb.run("echo $A; pwd", env={"A": "1 ü"}, cwd="/tmp").stdout


@check
def files(sb):
    sb.write("/tmp/ls015/note.txt", "hi ü\n")
    sb.write("rel015.bin", bytes(range(256)))
    try:
        sb.read("/does/not/exist")
        missing = None
    except ResourceNotFoundError as exc:
        missing = [type(exc).__name__, exc.resource_type]
    return {
        "text": sb.read("/tmp/ls015/note.txt").decode(),
        "binary_ok": sb.read("rel015.bin") == bytes(range(256)),
        "via_run": sb.run("cat /tmp/ls015/note.txt").stdout,
        "missing": missing,
    }


client = SandboxClient()
sb = client.get_sandbox(name)
out["sandbox"] = [sb.name, sb.status, bool(sb.dataplane_url)]
for fn in CHECKS:
    try:
        out[fn.__name__] = fn(sb)
    except Exception as exc:
        out[fn.__name__] = {"unexpected": f"{type(exc).__name__}: {exc}"}
sb.delete()
try:
    client.get_sandbox(name)
    out["deleted"] = False
except ResourceNotFoundError as exc:
    out["deleted"] = exc.resource_type == "sandbox"
print(json.dumps(out))
