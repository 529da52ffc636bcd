"""Runs inside a venv with the public langsmith 0.7.31 SDK *and* websockets: command execution
over ``/execute/ws`` (spec §4) — streaming, callbacks, offsets, stdin, kill, reconnect, timeout,
env/cwd, PTY, a 3 MB stream, ``CommandNotFound`` — and the HTTP fallback of §4.6 when the
upgrade is refused with 403 (provoked by a small local proxy in front of the data plane).

Argument: template name. Reads LANGSMITH_ENDPOINT / LANGSMITH_API_KEY; prints one JSON object of
observations, one key per check. A check that raises records ``{"unexpected": "<Type>: <msg>"}``
instead, so one failure does not hide the others.
"""

import copy
import http.client
import http.server
import json
import sys
import threading
import time
import urllib.parse

from langsmith.sandbox import (
    CommandTimeoutError,
    SandboxClient,
    SandboxConnectionError,
    SandboxOperationError,
)

template = sys.argv[1]
out = {}
CHECKS = []
#: Commands that went over HTTP ``/execute`` instead of the WebSocket, per sandbox object.
HTTP_FALLBACKS = {"direct": [], "proxied": []}


def check(fn):
    CHECKS.append(fn)
    return fn


def spy_http(sb, log):
    """Record each HTTP-fallback command on ``sb`` (the call still goes through)."""
    real = sb._run_http

    def spy(command, **kwargs):
        log.append(command)
        return real(command, **kwargs)

    sb._run_http = spy


def chunks_of(handle):
    return [[c.stream, c.data, c.offset] for c in handle]


def error_of(exc):
    return {
        "type": type(exc).__name__,
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
    """Five ``run("true")``: the server closes right after ``exit``, so no call waits on it."""
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        sb.run("true")
        times.append(time.monotonic() - t0)
    return sorted(times)[2]


@check
def callbacks(sb):
    t0 = time.monotonic()
    so, se = [], []
    r = sb.run(
        "printf 'a\\n'; printf 'b\\n' >&2; sleep 0.4; printf 'c\\n'",
        on_stdout=lambda d: so.append([d, time.monotonic() - t0]),
        on_stderr=lambda d: se.append([d, time.monotonic() - t0]),
    )
    return {
        "stdout": so,
        "stderr": se,
        "result": [r.stdout, r.stderr, r.exit_code],
        "total": time.monotonic() - t0,
    }


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
def stdin(sb):
    h = sb.run("read x; echo got:$x", timeout=10, wait=False)
    h.send_input("wörld\n")
    r = h.result
    return [r.stdout, r.exit_code]


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
def reconnect_offsets(sb):
    h = sb.run("printf 'ü€😀'; printf 'XY' >&2", wait=False)
    done = h.result
    tail = sb.reconnect(h.command_id, stdout_offset=2)
    tail_chunks = chunks_of(tail)
    tail_result = tail.result
    full = sb.reconnect(h.command_id).result
    end = sb.reconnect(h.command_id, stdout_offset=9, stderr_offset=1).result
    return {
        "done": [done.stdout, done.stderr, done.exit_code],
        "tail_chunks": tail_chunks,
        "tail": [tail_result.stdout, tail_result.stderr, tail_result.exit_code],
        "full": [full.stdout, full.stderr, full.exit_code],
        "end": [end.stdout, end.stderr, end.exit_code],
    }


@check
def unknown_command(sb):
    try:
        sb.reconnect("0" * 32).result  # noqa: B018 - the property drains the stream
    except SandboxOperationError as exc:
        return error_of(exc)
    return None


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
def pty(sb):
    r = sb.run("test -t 1 && echo tty; echo err >&2", pty=True)
    return [r.stdout, r.stderr, r.exit_code]


@check
def big_stream(sb):
    lines = 300_000  # "ü€😀\n" is 10 bytes: 3 MB of multi-byte UTF-8
    t0 = time.monotonic()
    h = sb.run(f"yes 'ü€😀' | head -n {lines}", wait=False)
    parts, sizes, contiguous, expect = [], [], True, 0
    for c in h:
        n = len(c.data.encode())
        contiguous = contiguous and c.stream == "stdout" and c.offset == expect
        expect += n
        parts.append(c.data)
        sizes.append(n)
    r = h.result
    return {
        "bytes": expect,
        "identical": "".join(parts) == "ü€😀\n" * lines == r.stdout,
        "contiguous": contiguous,
        "chunks": len(sizes),
        "max_chunk": max(sizes),
        "exit_code": r.exit_code,
        "seconds": time.monotonic() - t0,
    }


class _RefuseUpgrades(http.server.BaseHTTPRequestHandler):
    """403 for WebSocket upgrades; anything else is relayed to the real data plane."""

    upstream = ("127.0.0.1", 0)
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self, status, headers, body):
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _relay(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            body = json.dumps({"detail": {"error": "Forbidden", "message": "no ws here"}})
            self._answer(403, [("Content-Type", "application/json")], body.encode())
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        skip = ("host", "connection", "content-length")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        conn.request(self.command, self.path, body, headers)
        resp = conn.getresponse()
        self._answer(resp.status, resp.getheaders(), resp.read())
        conn.close()

    do_GET = do_POST = _relay


@check
def upgrade_403(sb):
    dp = urllib.parse.urlsplit(sb.dataplane_url)
    handler = type("Handler", (_RefuseUpgrades,), {"upstream": (dp.hostname, dp.port)})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        px = copy.copy(sb)
        px.__dict__.pop("_run_http", None)  # the copy's own spy, not the original's
        px.dataplane_url = f"http://127.0.0.1:{proxy.server_address[1]}{dp.path}"
        spy_http(px, HTTP_FALLBACKS["proxied"])
        r = px.run("echo via-http; exit 4")
        try:
            px.run("echo never", wait=False)
            streamed = None
        except SandboxConnectionError as exc:
            streamed = error_of(exc)
        return {"run": [r.stdout, r.exit_code], "wait_false": streamed}
    finally:
        proxy.shutdown()
        proxy.server_close()


client = SandboxClient()
with client.sandbox(template_name=template) as sb:
    spy_http(sb, HTTP_FALLBACKS["direct"])
    for fn in CHECKS:
        try:
            out[fn.__name__] = fn(sb)
        except Exception as exc:
            out[fn.__name__] = {"unexpected": f"{type(exc).__name__}: {exc}"}
out["http_fallbacks"] = HTTP_FALLBACKS
print(json.dumps(out))
