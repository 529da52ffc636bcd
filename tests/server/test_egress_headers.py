"""Header-injection rules (``proxy_config.rules``) over the real server: real sandboxes on a CNI
bridge of the test's own, a real HTTP upstream in a network namespace of its own.

Upstream addresses (198.51.100.0/24): ``.10`` ``api.<tag>.test`` (the rules' host), ``.20``
``other.<tag>.test``. The upstream answers each request with the SHA-256 of its
``Authorization`` header (never the header itself: the sandbox must not learn the secret from
the answer), the request's path and its body's length.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, remove_all_sandboxes, stop_server, wait_until
from tests.egress_upstream import NET, egress_bridge, egress_server, sh, upstream_namespace

pytestmark = pytest.mark.root

BOXES = "/api/v2/sandboxes/boxes"
SECRETS = "/api/v2/sandboxes/secrets"
SDK_PYTHON = Path("/var/cache/hutch/venvs/langsmith-0.15.1-ws/bin/python")

UPSTREAM = r"""
import hashlib, http.server, sys

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if self.headers.get("Transfer-Encoding") == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        auth = self.headers.get_all("Authorization") or []
        seen = ",".join(hashlib.sha256(a.encode()).hexdigest() for a in auth) or "none"
        extra = self.headers.get("X-Team", "none")
        text = f"{self.connection.getsockname()[0]} {self.path} {len(body)} {seen} {extra}\n"
        out = text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = _answer
    def log_message(self, *a):
        pass

class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

import ssl, threading
tls = S(("0.0.0.0", 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
for server in (S(("0.0.0.0", 80), H), tls):
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

#: Inside the sandbox: requests on one keep-alive connection (GET, POST with a length, POST
#: chunked), each answer on a line, over ``http`` or ``https`` (verified by the sandbox's own
#: trust store); with a fourth argument, the process then stays for a memory scan.
CLIENT = r"""
import http.client, ssl, sys, time
host, dial, scheme = sys.argv[1], sys.argv[2], sys.argv[3]
if scheme == "https":
    c = http.client.HTTPSConnection(host, 443, timeout=10, context=ssl.create_default_context())
else:
    c = http.client.HTTPConnection(dial, 80, timeout=10)
for method, path, body, chunked in (("GET", "/v1/models", None, False),
                                     ("POST", "/v1/chat", b"x" * 70000, False),
                                     ("POST", "/other", iter([b"ab", b"cde"]), True)):
    c.putrequest(method, path, skip_host=True)
    c.putheader("Host", host)
    c.putheader("Authorization", "Bearer sandbox-own")
    if chunked:
        c.putheader("Transfer-Encoding", "chunked")
    elif body is not None:
        c.putheader("Content-Length", str(len(body)))
    c.endheaders()
    if chunked:
        for part in body:
            c.send(b"%x\r\n%s\r\n" % (len(part), part))
        c.send(b"0\r\n\r\n")
    elif body is not None:
        c.send(body)
    sys.stdout.write(c.getresponse().read().decode())
sys.stdout.flush()
if len(sys.argv) > 4:
    open("/tmp/client.done", "w").close()
    time.sleep(120)
"""


@dataclass
class World:
    server: Server
    template: str
    api: str
    other: str


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, python_tar: Path) -> Iterator[World]:
    """The upstream namespace, the host's names for it, and a server with an egress template."""
    tmp = tmp_path_factory.mktemp("egress-headers")
    tag = secrets.token_hex(3)
    ours = f"{NET}.10 api.{tag}.test\n{NET}.20 other.{tag}.test\n"
    key, cert = str(tmp / "key.pem"), str(tmp / "cert.pem")
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
       f"/CN=api.{tag}.test", "-addext", f"subjectAltName=DNS:api.{tag}.test,DNS:other.{tag}.test",
       "-keyout", key, "-out", cert)  # fmt: skip
    bridge = f"hhb{tag}"
    with egress_bridge(bridge), upstream_namespace(tag, (10, 20), ours, UPSTREAM, cert, key):
        # The proxy verifies the upstream's certificate against this bundle only.
        srv = egress_server(
            tmp, python_tar, f"eh-{tag}", "--egress-bridge", bridge,
            "--egress-subnet", f"10.251.{secrets.randbelow(250) + 1}.0/24",
            env={"HUTCH_EGRESS_CA_BUNDLE": cert},
        )  # fmt: skip
        try:
            yield World(srv, f"eh-{tag}", f"api.{tag}.test", f"other.{tag}.test")
        finally:
            stop_server(srv)
            remove_all_sandboxes(srv.data_dir)


@dataclass
class Box:
    world: World
    id: str
    name: str

    def run(self, command: str) -> tuple[int, str]:
        with self.world.server.http() as http:
            r = http.post(f"/dp/{self.id}/execute", json={"command": command, "timeout": 30})
        assert r.status_code == 200, r.text
        out = r.json()
        return out["exit_code"], out["stdout"] + out["stderr"]

    def requests(self, host: str, dial: str | None = None, scheme: str = "http") -> list[str]:
        """The upstream's answers to the client's three requests for ``host``."""
        code, out = self.attempt(host, dial, scheme)
        assert code == 0, out
        return out.splitlines()

    def attempt(self, host: str, dial: str | None = None, scheme: str = "http") -> tuple[int, str]:
        return self.run(f"python3 -c {shlex.quote(CLIENT)} {host} {dial or host} {scheme}")


@pytest.fixture
def box_factory(world: World) -> Iterator[Any]:
    made: list[str] = []

    def make(proxy_config: dict[str, Any]) -> Box:
        name = f"eh-{uuid.uuid4().hex[:8]}"
        body = {"template_name": world.template, "name": name, "proxy_config": proxy_config}
        with world.server.http() as http:
            r = http.post(BOXES, json=body)
        assert r.status_code == 201, r.text
        made.append(name)
        box = Box(world, r.json()["id"], name)
        lines = f"{NET}.10 {world.api}\\n{NET}.20 {world.other}\\n"
        assert box.run(f"printf '{lines}' >> /etc/hosts")[0] == 0
        return box

    yield make
    with world.server.http() as http:
        for name in made:
            http.delete(f"{BOXES}/{name}")


def _secret(world: World, name: str) -> str:
    value = f"sk-{secrets.token_hex(16)}"
    with world.server.http() as http:
        assert http.put(f"{SECRETS}/{name}", json={"value": value}).status_code == 200
    return value


def _rule(world: World, value: str, kind: str = "workspace_secret", **extra: Any) -> Any:
    return {
        "name": "api",
        "match_hosts": [world.api],
        "headers": [{"name": "Authorization", "type": kind, "value": value}],
        **extra,
    }


def test_workspace_secret_reaches_only_its_host(world: World, box_factory: Any) -> None:
    """A workspace secret in an Authorization rule replaces the sandbox's own header on every
    request of a keep-alive connection (bodies by length and chunked pass intact); another host
    gets the sandbox's own header only, as does the rule's name sent to another address."""
    value = _secret(world, "API_TOKEN")
    box = box_factory({"rules": [_rule(world, "Bearer {API_TOKEN}")]})
    want = sha(f"Bearer {value}")
    assert box.requests(world.api) == [
        f"{NET}.10 /v1/models 0 {want} none",
        f"{NET}.10 /v1/chat 70000 {want} none",
        f"{NET}.10 /other 5 {want} none",
    ]
    own = sha("Bearer sandbox-own")
    assert box.requests(world.other)[0] == f"{NET}.20 /v1/models 0 {own} none"
    # Host says the rule's host, the address is another's: no secret.
    spoofed = box.requests(world.api, dial=f"{NET}.20")
    assert spoofed[0] == f"{NET}.20 /v1/models 0 {own} none"


def test_https_is_intercepted_only_for_the_rules_host(world: World, box_factory: Any) -> None:
    """Over HTTPS the rule's host gets the header on every keep-alive request, the sandbox
    verifying the proxy's certificate with the CA the server installed; the upstream's own
    certificate was verified by the proxy. Another host is not intercepted: its certificate
    (which the sandbox does not trust) reaches the sandbox unchanged."""
    value = _secret(world, "TLS_TOKEN")
    box = box_factory({"rules": [_rule(world, "Bearer {TLS_TOKEN}")]})
    want = sha(f"Bearer {value}")
    assert box.requests(world.api, scheme="https") == [
        f"{NET}.10 /v1/models 0 {want} none",
        f"{NET}.10 /v1/chat 70000 {want} none",
        f"{NET}.10 /other 5 {want} none",
    ]
    code, out = box.attempt(world.other, scheme="https")
    assert code != 0 and "CERTIFICATE_VERIFY_FAILED" in out, out
    code, bundle = box.run("cat /etc/ssl/certs/ca-certificates.crt")
    assert code == 0 and value not in bundle and "BEGIN CERTIFICATE" in bundle


def test_opaque_value_paths_and_redacted_answers(world: World, box_factory: Any) -> None:
    """An opaque value is injected only on matching paths, and is in no answer of the API (GET
    shows the rule with the value blanked); a plaintext header joins it."""
    value = f"opaque-{secrets.token_hex(12)}"
    rule = _rule(world, value, kind="opaque", match_paths=["/v1/*"])
    rule["headers"].append({"name": "X-Team", "type": "plaintext", "value": "blue"})
    box = box_factory({"rules": [rule]})
    answers = box.requests(world.api)
    assert answers[0] == f"{NET}.10 /v1/models 0 {sha(value)} blue"
    assert answers[2] == f"{NET}.10 /other 5 {sha('Bearer sandbox-own')} none"
    with world.server.http() as http:
        for path in (f"{BOXES}/{box.name}", BOXES, SECRETS):
            assert value not in http.get(path).text
        shown = http.get(f"{BOXES}/{box.name}").json()["proxy_config"]["rules"][0]
    assert shown["match_hosts"] == [world.api] and shown["match_paths"] == ["/v1/*"]
    assert shown["headers"] == [
        {"name": "Authorization", "type": "opaque", "value": ""},
        {"name": "X-Team", "type": "plaintext", "value": "blue"},
    ]


def test_patch_changes_rules_for_new_connections(world: World, box_factory: Any) -> None:
    """PATCH of proxy_config on a running sandbox: the next connection gets the new value;
    removing the rules stops the injection."""
    box = box_factory({"rules": [_rule(world, "first", kind="opaque")]})
    assert box.requests(world.api)[0].endswith(f"{sha('first')} none")
    with world.server.http() as http:
        r = http.patch(
            f"{BOXES}/{box.name}",
            json={"proxy_config": {"rules": [_rule(world, "second", kind="opaque")]}},
        )
        assert r.status_code == 200, r.text
        assert box.requests(world.api)[0].endswith(f"{sha('second')} none")
        r = http.patch(f"{BOXES}/{box.name}", json={"proxy_config": {"rules": []}})
        assert r.status_code == 200, r.text
    assert box.requests(world.api)[0].endswith(f"{sha('Bearer sandbox-own')} none")


def test_bad_rules_are_refused(world: World) -> None:
    """A missing workspace secret and a malformed rule answer 400 naming them; aws rules 501."""
    with world.server.http() as http:
        for rules, status, text in (
            ([_rule(world, "Bearer {NOPE_NOT_SET}")], 400, "NOPE_NOT_SET"),
            ([{"match_hosts": ["10.0.0.1"], "headers": [{"name": "A", "value": "b"}]}], 400,
             "match_hosts"),
            ([_rule(world, "x", kind="plaintext") | {"headers": [
                {"name": "Content-Length", "type": "plaintext", "value": "1"}]}], 400,
             "Content-Length"),
            ([{"name": "aws", "type": "aws", "aws": {"role_arn": "arn:x"}}], 501, "AWS"),
        ):  # fmt: skip
            r = http.post(BOXES, json={"template_name": world.template,
                                       "proxy_config": {"rules": rules}})  # fmt: skip
            assert r.status_code == status, r.text
            assert text in r.json()["detail"]["message"], r.text


def _memory_holds(pid: int, needle: bytes) -> bool:
    """Does any readable mapping of ``pid`` hold ``needle`` (read from the host)?"""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            if end - start > 1 << 30:
                continue
            try:
                if needle in os.pread(fd, end - start, start):
                    return True
            except OSError:
                continue
    finally:
        os.close(fd)
    return False


def test_the_secret_never_enters_the_sandbox(world: World, box_factory: Any) -> None:
    """After injected requests, the secret is in no environment, no file of the sandbox and no
    memory of its processes (scanned from the host; the scan finds the answers it did get)."""
    value = _secret(world, "SCAN_TOKEN")
    box = box_factory({"rules": [_rule(world, "Bearer {SCAN_TOKEN}")]})
    marker = f"m{secrets.token_hex(6)}"
    code, out = box.run(
        f"nohup python3 -c {shlex.quote(CLIENT)} {world.api} {world.api} https {marker} "
        "> /tmp/client.out 2>&1 &"
    )
    assert code == 0, out
    deadline = time.monotonic() + 30
    while box.run("test -e /tmp/client.done")[0] != 0:
        assert time.monotonic() < deadline, box.run("cat /tmp/client.out")[1]
    answers = box.run("cat /tmp/client.out")[1]
    assert sha(f"Bearer {value}") in answers  # the header did reach the upstream
    code, out = box.run(
        f"env; cat /proc/*/environ 2>/dev/null; grep -rlF {shlex.quote(value)} / "
        "--exclude-dir=proc --exclude-dir=sys --exclude-dir=dev; echo done"
    )
    assert value not in out and out.endswith("done\n"), out
    pids = []
    for p in Path("/proc").iterdir():
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone, or not a process
            continue
        if argv[0].endswith(b"python3") and marker.encode() in argv:
            pids.append(int(p.name))
    assert pids
    for pid in pids:
        assert _memory_holds(pid, sha(f"Bearer {value}").encode())  # the scan works
        assert not _memory_holds(pid, value.encode())


def test_langsmith_sdk_helpers_work_unchanged(world: World, box_factory: Any) -> None:
    """The langsmith 0.15.1 SDK's proxy_config, workspace_secret and opaque_secret helpers,
    sent by its update_sandbox, give a running sandbox the headers."""
    value = _secret(world, "SDK_TOKEN")
    box = box_factory({"rules": []})
    script = f"""
from langsmith.sandbox import SandboxClient, proxy_config, workspace_secret, opaque_secret
c = SandboxClient(api_endpoint="{world.server.base}", api_key="{world.server.key}")
rule = {{"name": "api", "match_hosts": ["{world.api}"],
         "headers": [{{"name": "Authorization", **workspace_secret("SDK_TOKEN")}},
                     {{"name": "X-Team", **opaque_secret("red")}}]}}
c.update_sandbox("{box.name}", proxy_config=proxy_config(rules=[rule]))
print("updated")
"""
    out = subprocess.run([str(SDK_PYTHON), "-c", script], capture_output=True, text=True)
    assert out.stdout == "updated\n", out.stderr
    assert box.requests(world.api)[0] == f"{NET}.10 /v1/models 0 {sha(value)} red"


def test_secret_values_are_sealed_on_the_host(world: World, box_factory: Any) -> None:
    """The sandbox's saved policy holds header values sealed, not in clear."""
    value = f"opaque-{secrets.token_hex(12)}"
    box = box_factory({"rules": [_rule(world, value, kind="opaque")]})
    saved = (world.server.data_dir / "egress" / f"{box.id}.json").read_text()
    assert value not in saved and "sealed" in json.loads(saved)["header_rules"][0]["headers"][0]
    assert re.search(r"secrets\.key", str(list(world.server.data_dir.iterdir())))


def test_the_ca_comes_with_every_create_and_start(world: World) -> None:
    """A sandbox created with rules and not waited for has the egress CA in its trust store
    (the runtime installs it as the sandbox starts, not the create's answer), and a stop and a
    start leave it there once."""
    name = f"eh-{uuid.uuid4().hex[:8]}"
    body = {
        "template_name": world.template,
        "name": name,
        "wait_for_ready": False,
        "proxy_config": {"rules": [_rule(world, "Bearer x", kind="plaintext")]},
    }
    with world.server.http() as http:
        r = http.post(BOXES, json=body)
        assert r.status_code == 201, r.text
        box = Box(world, r.json()["id"], name)
        try:

            def ready() -> bool:
                return http.get(f"{BOXES}/{name}").json()["status"] == "ready"

            assert wait_until(ready, 60)
            pem = (world.server.data_dir / "egress" / "ca" / "ca.pem").read_text()
            cert = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S)
            assert cert is not None
            for _ in range(2):
                code, bundle = box.run("cat /etc/ssl/certs/ca-certificates.crt")
                assert code == 0 and bundle.count(cert.group(0)) == 1, bundle
                assert http.post(f"{BOXES}/{name}/stop").status_code == 200
                assert http.post(f"{BOXES}/{name}/start").status_code == 200
        finally:
            http.delete(f"{BOXES}/{name}")
