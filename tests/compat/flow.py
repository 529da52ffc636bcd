"""Runs inside a virtualenv holding one public ``langsmith`` SDK: the protocol spec's Appendix B
checklist, as far as it applies to that SDK, against a hutch server.

Which checks apply is read off the SDK itself (templates or not, ``websockets`` installed or not,
start/stop or not) and printed under ``"sdk"``, so the caller can tell which SDK each observation
came from. Argument: a JSON object ``{"prefix": <name prefix>, "image": <image name>, "ports":
[5 free local ports]}``. Reads LANGSMITH_ENDPOINT / LANGSMITH_API_KEY. Prints one JSON object,
one key per check; a check that raises records ``{"unexpected": "<Type>: <msg>"}`` instead, so
one failure does not hide the others.
"""

import asyncio
import copy
import dataclasses
import hashlib
import http.client
import http.server
import importlib.metadata
import importlib.util
import json
import os
import selectors
import socket
import struct
import sys
import threading
import time
import urllib.parse
import uuid

from langsmith.sandbox import (
    AsyncSandboxClient,
    CommandTimeoutError,
    SandboxClient,
    SandboxConnectionError,
)

ARGS = json.loads(sys.argv[1])
P, IMAGE, PORTS = ARGS["prefix"], ARGS["image"], ARGS["ports"]
API_KEY = os.environ["LANGSMITH_API_KEY"]
WS = importlib.util.find_spec("websockets") is not None
TEMPLATES = hasattr(SandboxClient, "create_template")
START_STOP = hasattr(SandboxClient, "start_sandbox")
NEWEST = not TEMPLATES  # 0.15: no templates, client-supplied command ids, no HTTP fallback
CAPS = {
    "ws": WS,
    "http": not WS,
    "templates": TEMPLATES,
    "start_stop": START_STOP,
    "newest": NEWEST,
    "fallback": TEMPLATES and WS,
}
TEMPLATE = f"{P}-t"
CHECKS = []
#: Commands that went over HTTP ``/execute`` (template era), per sandbox object.
HTTP_RUNS = {"direct": [], "proxied": []}


def check(*needs):
    def register(fn):
        if all(CAPS[n] for n in needs):
            CHECKS.append(fn)
        return fn

    return register


def error_of(exc):
    return {
        "type": type(exc).__name__,
        "str": str(exc),
        "connection_error": isinstance(exc, SandboxConnectionError),
        "resource_type": getattr(exc, "resource_type", None),
        "error_type": getattr(exc, "error_type", None),
        "operation": getattr(exc, "operation", None),
        "field": getattr(exc, "field", None),
        "quota_type": getattr(exc, "quota_type", None),
    }


def raises(fn):
    """The error ``fn()`` raises (as observations), or None."""
    try:
        fn()
    except Exception as exc:
        return error_of(exc)
    return None


def chunks_of(handle):
    return [[c.stream, c.data, c.offset] for c in handle]


def create(client, **kw):
    """A sandbox of this era: from the flow's template, or from the server's default image."""
    if TEMPLATES:
        return client.create_sandbox(TEMPLATE, **kw)
    return client.create_sandbox(**kw)


def spy_http(sb, log):
    """Record each HTTP ``/execute`` fallback of ``sb`` (the call still goes through)."""
    real = sb._run_http

    def spy(command, **kwargs):
        log.append(command)
        return real(command, **kwargs)

    sb._run_http = spy


# -- control plane -------------------------------------------------------------------------------


@check("templates")
def templates(c, sb):
    from langsmith.sandbox import VolumeMountSpec

    a, b, renamed = f"{P}-ta", f"{P}-tb", f"{P}-tc"
    made = c.create_template(a, IMAGE, cpu="250m", memory="128Mi")
    got = c.get_template(a)
    out = {
        "made": [made.name, made.image, made.resources.cpu, made.resources.memory],
        "got": [got.name, got.image, got.id == made.id],
        "listed": a in [t.name for t in c.list_templates()],
        "duplicate": raises(lambda: c.create_template(a, IMAGE)),
        "bad_cpu": raises(lambda: c.create_template(f"{P}-td", IMAGE, cpu="lots")),
        "volumes": raises(
            lambda: c.create_template(
                f"{P}-te", IMAGE, volume_mounts=[VolumeMountSpec(volume_name="v", mount_path="/v")]
            )
        ),
        "in_use": raises(lambda: c.delete_template(TEMPLATE)),  # the main sandbox uses it
    }
    c.create_template(b, IMAGE)
    out["conflict"] = raises(lambda: c.update_template(a, new_name=b))
    out["renamed"] = c.update_template(a, new_name=renamed).name
    out["old_name"] = raises(lambda: c.get_template(a))
    c.delete_template(renamed)
    c.delete_template(b)
    out["delete_missing"] = raises(lambda: c.delete_template(b))
    return out


@check()
def status_get_list(c, sb):
    got = c.get_sandbox(sb.name)
    return {
        "status": c.get_sandbox_status(sb.name).status,
        "get": [got.name, got.status, got.id == sb.id, got.dataplane_url == sb.dataplane_url],
        "listed": sb.name in [s.name for s in c.list_sandboxes()],
        "missing": raises(lambda: c.get_sandbox(f"{P}-nobody")),
        "missing_status": raises(lambda: c.get_sandbox_status(f"{P}-nobody")),
    }


@check()
def wait_for_ready_false(c, sb):
    x = create(c, wait_for_ready=False)
    out = {"first": x.status}
    if TEMPLATES:  # the template-era client refuses data-plane calls until a re-fetch (§3.1)
        out["early"] = raises(lambda: x.run("true"))
    out["status"] = c.get_sandbox_status(x.name).status
    ready = c.wait_for_sandbox(x.name, timeout=60)
    out["ready"] = [ready.status, ready.run("echo up").stdout]
    c.delete_sandbox(x.name)
    return out


@check()
def update_and_delete(c, sb):
    x = create(c, name=f"{P}-x")
    renamed = c.update_sandbox(x.name, new_name=f"{P}-y")
    out = {
        "renamed": [renamed.name, renamed.id == x.id],
        "old_name": raises(lambda: c.get_sandbox(f"{P}-x")),
        "conflict": raises(lambda: c.update_sandbox(f"{P}-y", new_name=sb.name)),
        "missing": raises(lambda: c.update_sandbox(f"{P}-nobody", new_name=f"{P}-z")),
        # The data plane is addressed by id: the old object still works after the rename.
        "old_object_runs": x.run("echo same").stdout,
    }
    c.delete_sandbox(f"{P}-y")
    out["deleted"] = raises(lambda: c.get_sandbox(f"{P}-y"))
    out["delete_again"] = raises(lambda: c.delete_sandbox(f"{P}-y"))
    return out


@check()
def lifetimes(c, sb):
    if TEMPLATES:
        x = c.create_sandbox(TEMPLATE, ttl_seconds=3600, idle_ttl_seconds=600)
        out = {"made": [x.ttl_seconds, x.idle_ttl_seconds, x.created_at, x.expires_at]}
        up = c.update_sandbox(x.name, idle_ttl_seconds=0)
        out["idle_off"] = [up.ttl_seconds, up.idle_ttl_seconds, up.created_at, up.expires_at]
        up = c.update_sandbox(x.name, ttl_seconds=0)
        out["all_off"] = [up.ttl_seconds, up.idle_ttl_seconds, up.expires_at]
        out["not_a_minute"] = raises(lambda: c.update_sandbox(x.name, ttl_seconds=30))
    else:
        x = c.create_sandbox(idle_ttl_seconds=600, delete_after_stop_seconds=120)
        out = {"made": [x.idle_ttl_seconds, x.delete_after_stop_seconds, x.stopped_at]}
        up = c.update_sandbox(x.name, idle_ttl_seconds=0, delete_after_stop_seconds=60)
        out["changed"] = [up.idle_ttl_seconds, up.delete_after_stop_seconds]
        out["not_a_minute"] = raises(lambda: c.update_sandbox(x.name, idle_ttl_seconds=30))
    c.delete_sandbox(x.name)
    return out


@check("start_stop")
def start_stop(c, sb):
    x = create(c)
    x.write("/home/user/keep.txt", "kept\n")
    stale = copy.copy(x)  # still says ready, with its data-plane URL
    x.stop()
    got = c.get_sandbox(x.name)
    out = {
        "local": [x.status, x.dataplane_url is not None],
        "status": c.get_sandbox_status(x.name).status,
        "fetched": [got.status, getattr(got, "stopped_at", "n/a") is not None],
        "stale_read": raises(lambda: stale.read("/home/user/keep.txt")),
        "stale_run": raises(lambda: stale.run("true")),
        "after_stale": c.get_sandbox(x.name).status,
        "stop_missing": raises(lambda: c.stop_sandbox(f"{P}-nobody")),
        "start_missing": raises(lambda: c.start_sandbox(f"{P}-nobody")),
    }
    x.start()
    out["after"] = [x.status, x.read("/home/user/keep.txt").decode(), x.run("echo up").stdout]
    c.delete_sandbox(x.name)
    return out


@check()
def service_url(c, sb):
    """client.service(): the four fields, and the SDK's own HTTP helper (token header, no API
    key) reaching a loopback-only service in the sandbox; an unknown sandbox is not found."""
    sb.run("mkdir -p /svc && echo service-ok > /svc/index.html && httpd -p 127.0.0.1:8090 -h /svc")
    svc = c.service(sb.name, 8090, expires_in_seconds=300)
    page = svc.get("/index.html")
    return {
        "status": page.status_code,
        "text": page.text,
        "service_url": svc.service_url,
        "browser_url": svc.browser_url.split("?")[0],
        "token": bool(svc.token),
        "expires_at": svc.expires_at,
        "sandbox_id": sb.id,
        "missing": raises(lambda: c.service(f"{P}-nobody", 8090)),
    }


@check()
def unimplemented(c, sb):
    out = {}
    if TEMPLATES:
        out["create_volume"] = raises(lambda: c.create_volume(f"{P}-v", "1Gi"))
        out["list_volumes"] = raises(c.list_volumes)
        out["create_pool"] = raises(lambda: c.create_pool(f"{P}-p", TEMPLATE, 1))
        out["list_pools"] = raises(c.list_pools)
    return out


@check()
def create_errors(c, sb):
    bad = SandboxClient(api_key="wrong-key")
    out = {
        "duplicate_name": raises(lambda: create(c, name=sb.name)),
        "bad_name": raises(lambda: create(c, name="Not_A_Name")),
        "unauthorized_list": raises(bad.list_sandboxes),
        "unauthorized_create": raises(lambda: create(bad)),
        "unauthorized_dataplane": raises(
            lambda: dataclasses.replace(sb, _client=bad, _auto_delete=False).read("/etc/hostname")
        ),
    }
    if TEMPLATES:
        out["unknown_template"] = raises(lambda: c.create_sandbox(f"{P}-none"))
        c.create_template(f"{P}-missing", "local/not-imported")
        out["image_pull"] = raises(lambda: c.create_sandbox(f"{P}-missing"))
        c.delete_template(f"{P}-missing")
        # Ready within 0 s is impossible: 408, and the sandbox goes on provisioning.
        out["not_ready_in_time"] = raises(lambda: create(c, name=f"{P}-slow", timeout=0))
        c.wait_for_sandbox(f"{P}-slow", timeout=60)
        c.delete_sandbox(f"{P}-slow")
    else:
        out["proxy_config"] = raises(
            lambda: c.create_sandbox(
                proxy_config={"rules": [{"name": "a", "type": "aws", "aws": {}}]}
            )
        )
    return out


# -- data plane ----------------------------------------------------------------------------------


@check()
def run(c, sb):
    r = sb.run("echo hello; echo oops >&2; exit 3")
    return [r.stdout, r.stderr, r.exit_code, r.success]


@check()
def env_cwd(c, sb):
    return sb.run("echo $A; pwd", env={"A": "1 ü"}, cwd="/tmp").stdout


@check()
def command_error(c, sb):
    return raises(lambda: sb.run("true", cwd="/no/such/dir"))


@check()
def files(c, sb):
    sb.write(f"/tmp/{P}/note.txt", "hi ü\n")
    sb.write(f"{P}.bin", bytes(range(256)))
    return {
        "text": sb.read(f"/tmp/{P}/note.txt").decode(),
        "binary_ok": sb.read(f"{P}.bin") == bytes(range(256)),
        "relative_home": sb.run(f"cmp -s /home/user/{P}.bin /home/user/{P}.bin && echo y").stdout,
        "via_run": sb.run(f"cat /tmp/{P}/note.txt").stdout,
        "missing": raises(lambda: sb.read("/does/not/exist")),
        "read_dir": raises(lambda: sb.read("/etc")),
        "write_dir": raises(lambda: sb.write("/etc", "x")),
    }


@check()
def timeout(c, sb):
    t0 = time.monotonic()
    try:
        r = sb.run("echo part; sleep 5", timeout=1)
    except CommandTimeoutError as exc:
        return {**error_of(exc), "seconds": time.monotonic() - t0}
    return {"result": [r.stdout, r.exit_code], "seconds": time.monotonic() - t0}


@check("http")
def no_websockets(c, sb):
    return {
        "wait_false": raises(lambda: sb.run("true", wait=False)),
        "callbacks": raises(lambda: sb.run("true", on_stdout=print)),
        "tunnel": raises(lambda: sb.tunnel(remote_port=PORTS[0]).__enter__()),
    }


@check("ws")
def round_trip(c, sb):
    """The median of five ``run("true")``: the server closes right after ``exit``."""
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        sb.run("true")
        times.append(time.monotonic() - t0)
    return sorted(times)[2]


@check("ws")
def callbacks(c, sb):
    t0 = time.monotonic()
    so, se = [], []
    r = sb.run(
        "printf 'a\\n'; printf 'b\\n' >&2; sleep 0.4; printf 'c\\n'",
        on_stdout=lambda d: so.append([d, time.monotonic() - t0]),
        on_stderr=lambda d: se.append([d, time.monotonic() - t0]),
    )
    return {"stdout": so, "stderr": se, "result": [r.stdout, r.stderr, r.exit_code]}


@check("ws")
def utf8_offsets(c, sb):
    h = sb.run(
        "printf 'a\\n'; sleep 0.2; printf 'ü€😀\\n'; sleep 0.2; printf 'z\\n' >&2", wait=False
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


@check("ws")
def stdin(c, sb):
    kw = {"close_input": False} if NEWEST else {}
    h = sb.run("read x; echo got:$x", timeout=10, wait=False, **kw)
    h.send_input("wörld\n")
    r = h.result
    return [r.stdout, r.exit_code]


@check("ws")
def kill(c, sb):
    h = sb.run("echo ready; sleep 30", wait=False)
    it = iter(h)
    first = next(it)
    t0 = time.monotonic()
    h.kill()
    raised = raises(lambda: [None for _ in it])
    r = sb.reconnect(h.command_id).result
    return {
        "first": [first.stream, first.data],
        "raised": raised,
        "after": [r.stdout, r.exit_code],
        "seconds": time.monotonic() - t0,
    }


@check("ws")
def reconnect_offsets(c, sb):
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


@check("ws")
def unknown_command(c, sb):
    return raises(lambda: sb.reconnect("0" * 32).result)


@check("ws")
def session_expired(c, sb):
    h = sb.run("echo gone-soon", wait=False, ttl_seconds=1)
    h.result  # noqa: B018 - drains the stream
    time.sleep(1.5)
    return {"command_id": h.command_id, "error": raises(lambda: sb.reconnect(h.command_id).result)}


@check("ws")
def pty(c, sb):
    r = sb.run("test -t 1 && echo tty; echo err >&2", pty=True)
    return [r.stdout, r.stderr, r.exit_code]


@check("ws")
def big_stream(c, sb):
    lines = 300_000  # "ü€😀\n" is 10 bytes: 3 MB of multi-byte UTF-8
    h = sb.run(f"yes 'ü€😀' | head -n {lines}", wait=False)
    parts, sizes, contiguous, expect = [], [], True, 0
    for ch in h:
        n = len(ch.data.encode())
        contiguous = contiguous and ch.stream == "stdout" and ch.offset == expect
        expect += n
        parts.append(ch.data)
        sizes.append(n)
    r = h.result
    return {
        "bytes": expect,
        "identical": "".join(parts) == "ü€😀\n" * lines == r.stdout,
        "contiguous": contiguous,
        "chunks": len(sizes),
        "max_chunk": max(sizes),
        "exit_code": r.exit_code,
    }


class CuttingProxy:
    """A TCP relay to the data plane that resets its first connection in the middle of the first
    server message holding ``marker``: an abnormal close mid-stream (§4.7)."""

    def __init__(self, upstream, marker):
        self.upstream, self.marker = upstream, marker
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            cut = self.connections == 1
            threading.Thread(target=self._relay, args=(conn, cut), daemon=True).start()

    def _relay(self, conn, cut):
        """Both directions in one thread, so a reset closes sockets no other thread is in."""
        up = socket.create_connection(self.upstream)
        peer = {conn: up, up: conn}
        with selectors.DefaultSelector() as sel:
            for s in peer:
                sel.register(s, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    src = key.fileobj
                    data = src.recv(65536)
                    if not data:
                        for s in peer:
                            s.close()
                        return
                    if src is up and cut and self.marker in data:
                        conn.sendall(data[: data.index(self.marker)])
                        self.cuts += 1
                        for s in peer:  # RST both ways: no close frame, no FIN
                            s.setsockopt(
                                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                            )
                            s.close()
                        return
                    peer[src].sendall(data)

    def close(self):
        self.server.close()


@check("ws")
def auto_resume(c, sb):
    """The connection is reset mid-stream; the SDK reconnects from its offsets on its own and the
    result has every byte exactly once."""
    dp = urllib.parse.urlsplit(sb.dataplane_url)
    proxy = CuttingProxy((dp.hostname, dp.port), marker=b"a100")
    try:
        px = copy.copy(sb)
        px.dataplane_url = f"http://127.0.0.1:{proxy.port}{dp.path}"
        h = px.run(
            "echo first; sleep 0.3; seq 1 150 | sed s/^/a/; sleep 1; seq 1 150 | sed s/^/b/;"
            " seq 1 20 | sed s/^/e/ >&2",
            wait=False,
        )
        chunks = chunks_of(h)
        r = h.result
    finally:
        proxy.close()
    return {
        "chunks": chunks,
        "result": [r.stdout, r.stderr, r.exit_code],
        "connections": proxy.connections,
        "cuts": proxy.cuts,
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


@check("ws")
def upgrade_403(c, sb):
    """Upgrades refused with 403 in front of the data plane: the template era falls back to HTTP
    for run(); wait=False has no fallback (and 0.15 has none at all)."""
    dp = urllib.parse.urlsplit(sb.dataplane_url)
    handler = type("Handler", (_RefuseUpgrades,), {"upstream": (dp.hostname, dp.port)})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        px = copy.copy(sb)
        px.dataplane_url = f"http://127.0.0.1:{proxy.server_address[1]}{dp.path}"
        if TEMPLATES:
            px.__dict__.pop("_run_http", None)  # the copy's own spy, not the original's
            spy_http(px, HTTP_RUNS["proxied"])
        try:
            r = px.run("echo via-http; exit 4")
            ran = [r.stdout, r.exit_code]
        except Exception as exc:
            ran = error_of(exc)
        return {"run": ran, "wait_false": raises(lambda: px.run("echo never", wait=False))}
    finally:
        proxy.shutdown()
        proxy.server_close()


@check("ws")
def tunnel(c, sb):
    """HTTP to a loopback-only service; two tunnels with three concurrent 3 MiB echoes; a port
    nothing listens on closes the local connection; local_port=0 mirrors the remote port."""
    echo_port, mirror = 7000, PORTS[4]
    sb.run("mkdir -p /www && hostname > /www/hostname && httpd -p 127.0.0.1:8080 -h /www")
    for port in (echo_port, mirror):
        sb.run(f"nc -ll -p {port} -e /bin/cat </dev/null >/dev/null 2>&1 &")
    deadline = time.monotonic() + 10
    while True:
        listening = sb.run("netstat -ltn").stdout
        if all(f":{p} " in listening for p in (8080, echo_port, mirror)):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the services did not start: {listening}")
        time.sleep(0.05)

    def recv_all(s):
        s.settimeout(30)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data

    def http_get(port):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
            return recv_all(s).partition(b"\r\n\r\n")[2].decode()

    def echo(port, results):
        payload = os.urandom(3 * 1024 * 1024)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                sender = threading.Thread(target=s.sendall, args=(payload,))
                sender.start()
                got = b""
                while len(got) < len(payload) and (chunk := s.recv(65536)):
                    got += chunk
                sender.join()
        except OSError as exc:
            results.append(f"{type(exc).__name__}: {exc}")
            return
        results.append(hashlib.sha256(got).digest() == hashlib.sha256(payload).digest())

    out = {"name": sb.name}
    with sb.tunnel(remote_port=8080, local_port=PORTS[0]) as t:
        out["local_port"] = t.local_port
        out["http_body"] = http_get(t.local_port)
    with (
        sb.tunnel(remote_port=echo_port, local_port=PORTS[1]) as e,
        sb.tunnel(remote_port=8080, local_port=PORTS[2]) as w,
    ):
        results = []
        threads = [threading.Thread(target=echo, args=(e.local_port, results)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        out["echo_ok"] = results
        out["second_tunnel_body"] = http_get(w.local_port)
    with (
        sb.tunnel(remote_port=7999, local_port=PORTS[3]) as dead,
        socket.create_connection(("127.0.0.1", dead.local_port), timeout=30) as s,
    ):
        try:
            out["refused_read"] = recv_all(s).decode()
        except ConnectionResetError:
            out["refused_read"] = ""
    with sb.tunnel(remote_port=mirror) as m:
        results = []
        echo(m.local_port, results)
        out["mirror"] = [m.local_port == mirror, results]
    return out


# -- the newest SDK's exec deltas (§9.1) ------------------------------------------------------


@check("newest")
def get_or_create(c, sb):
    """The SDK's own ``run_ws_stream`` with one fixed ``command_id``, issued three times: the
    first socket is dropped right after ``started``, the second re-issues while the command
    runs, the third after it finished. One process, one line in the file."""
    from langsmith.sandbox._ws_execute import run_ws_stream

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


@check("newest")
def parallel_get_or_create(c, sb):
    """Two executes with one new ``command_id`` at the same moment: still one process."""
    from langsmith.sandbox._ws_execute import run_ws_stream

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


@check("newest")
def close_stdin(c, sb):
    """``close_stdin: true`` is the default (``cat`` reads EOF at once); with
    ``close_input=False``, ``close_input()`` sends the ``close_stdin`` message."""
    from langsmith.sandbox._ws_execute import reconnect_ws_stream

    t0 = time.monotonic()
    r = sb.run("cat; echo done", timeout=20)
    default = {"result": [r.stdout, r.exit_code], "seconds": time.monotonic() - t0}
    t0 = time.monotonic()
    h = sb.run("cat; echo eof", close_input=False, timeout=20, wait=False)
    h.send_input("abc\n")
    h.close_input()
    r = h.result
    message = {"result": [r.stdout, r.exit_code], "seconds": time.monotonic() - t0}
    raw, _ = reconnect_ws_stream(sb.dataplane_url, API_KEY, h.command_id, stdout_offset=4)
    return {
        "default": default,
        "message": message,
        "pid": h.pid,
        "cid": h.command_id,
        "raw": list(raw),
    }


# -- async ---------------------------------------------------------------------------------------


@check()
def async_client(c, sb):
    async def main():
        async with AsyncSandboxClient() as ac:
            made = await (ac.sandbox(template_name=TEMPLATE) if TEMPLATES else ac.sandbox())
            async with made as asb:
                r = await asb.run("echo async; echo e >&2; exit 2")
                await asb.write("async.txt", "ä")
                data = await asb.read("async.txt")
                name = asb.name
            try:
                await ac.get_sandbox(name)
                deleted = None
            except Exception as exc:
                deleted = error_of(exc)
        return {"run": [r.stdout, r.stderr, r.exit_code], "read": data.decode(), "deleted": deleted}

    return asyncio.run(main())


# -- the flow --------------------------------------------------------------------------------


def main():
    out = {
        "sdk": {
            "version": importlib.metadata.version("langsmith"),
            "websockets": WS,
            "templates": TEMPLATES,
            "start_stop": START_STOP,
        }
    }
    client = SandboxClient()
    if TEMPLATES:
        t = client.create_template(TEMPLATE, IMAGE, cpu="500m", memory="256Mi")
        out["template"] = [t.name, t.image, t.resources.cpu, t.resources.memory]
        made = client.sandbox(template_name=TEMPLATE)
    else:
        made = client.sandbox()
    with made as sb:
        template = getattr(sb, "template_name", None)
        out["sandbox"] = [sb.name, sb.status, bool(sb.dataplane_url), template]
        if TEMPLATES:
            spy_http(sb, HTTP_RUNS["direct"])
        seconds = out["seconds"] = {}
        for fn in CHECKS:
            t0 = time.monotonic()
            try:
                out[fn.__name__] = fn(client, sb)
            except Exception as exc:
                out[fn.__name__] = {"unexpected": f"{type(exc).__name__}: {exc}"}
            seconds[fn.__name__] = round(time.monotonic() - t0, 2)
        name = sb.name
    out["context_manager_deleted"] = raises(lambda: client.get_sandbox(name))
    if TEMPLATES:
        client.delete_template(TEMPLATE)
        out["http_runs"] = HTTP_RUNS
    print(json.dumps(out))


main()
