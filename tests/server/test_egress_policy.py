"""Egress access control (``proxy_config.access_control``) over the real server: real sandboxes on
a CNI bridge of the test's own, real HTTP, HTTPS and DNS upstreams in a network namespace of
their own standing in for the internet.

Upstream addresses (198.51.100.0/24, TEST-NET-2) and the names the tests give them:

* ``.10`` ``allowed.<tag>.test``, ``.20`` ``denied.<tag>.test``, ``.40`` (no name),
  ``.200`` (for CIDR rules), ``.53`` the resolver the server hands sandboxes (``--dns``).

Every address serves HTTP on 80 (the answer names the address), HTTPS on 443 (a self-signed
certificate) and DNS on UDP 53 (any A query answers 192.0.2.1). The names are in the host's
``/etc/hosts`` for the proxy's check, and in each sandbox's own ``/etc/hosts``.
"""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hutch.runtime.runc._egress_firewall import chain_names
from tests.conftest import (
    Server,
    remove_all_sandboxes,
    start_server,
    stop_server,
    wait_until,
)
from tests.egress_upstream import NET, egress_bridge, egress_server, sh, upstream_namespace

pytestmark = pytest.mark.root

BOXES = "/v2/sandboxes/boxes"
LASTS = (10, 20, 40, 53, 200)
SDK_PYTHON = Path("/var/cache/hutch/venvs/langsmith-0.15.1-ws/bin/python")
#: The client inside sandboxes (Debian's Python): ``get URL`` fetches (TLS unverified, SNI
#: sent), ``udp IP`` asks a DNS question over UDP; output says what happened, exit 0 on success.
CLIENT = r"""
import socket, ssl, sys, urllib.request
what, target = sys.argv[1], sys.argv[2]
try:
    if what == "get":
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with urllib.request.urlopen(target, timeout=10, context=ctx) as r:
            sys.stdout.write(r.read().decode())
    elif what == "spoof":  # a UDP datagram from another address of the subnet, then "end"
        import struct
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.connect((target, 9))
        own = probe.getsockname()[0]
        forged = own.rsplit(".", 1)[0] + ".250"
        payload = b"spoofed"
        udp = struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         socket.inet_aton(forged), socket.inet_aton(target))
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        raw.sendto(ip + udp, (target, 0))
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"end", (sys.argv[3], 9999))
        print("sent")
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.connect((target, 53))
        s.send(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03org\x00\x00\x01\x00\x01")
        print(".".join(map(str, s.recv(512)[-4:])))
except Exception as exc:
    print("ERR", type(exc).__name__, exc)
    sys.exit(1)
"""
#: A refused connection must fail at once: well under a connect timeout (exec overhead included).
FAST = 3.0

UPSTREAM = r"""
import http.server, socket, socketserver, ssl, struct, sys, threading

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {self.connection.getsockname()[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

plain = S(("0.0.0.0", 80), H)
tls = S(("0.0.0.0", 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)

def dns(address):
    # One socket per address: a reply must come from the address that was asked.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, 53))
    while True:
        q, peer = s.recvfrom(512)
        end = q.index(b"\0", 12) + 5
        head = q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
        answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([192, 0, 2, 1])
        s.sendto(head + q[12:end] + answer, peer)

for target in (plain.serve_forever, tls.serve_forever):
    threading.Thread(target=target, daemon=True).start()
for address in sys.argv[3:]:
    threading.Thread(target=dns, args=(address,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


@dataclass
class World:
    server: Server
    template: str
    allowed: str
    denied: str
    bridge: str
    #: The upstream network namespace.
    ns: str
    #: ``hutch serve`` options of the server.
    args: tuple[str, ...]


def _hosts_lines(tag: str) -> str:
    return f"{NET}.10 allowed.{tag}.test\n{NET}.20 denied.{tag}.test\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, python_tar: Path) -> Iterator[World]:
    """The upstream namespace, the host's names for it, and a server with an egress template."""
    tmp = tmp_path_factory.mktemp("egress")
    tag = secrets.token_hex(3)
    bridge = f"hne{tag}"
    key, cert = str(tmp / "key.pem"), str(tmp / "cert.pem")
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
       f"/CN=allowed.{tag}.test", "-keyout", key, "-out", cert)  # fmt: skip
    addresses = [f"{NET}.{i}" for i in LASTS]
    with (
        egress_bridge(bridge),
        upstream_namespace(tag, LASTS, _hosts_lines(tag), UPSTREAM, cert, key, *addresses) as ns,
    ):
        subnet = f"10.252.{secrets.randbelow(250) + 1}.0/24"
        args = ("--egress-bridge", bridge, "--egress-subnet", subnet, "--dns", f"{NET}.53")
        srv = egress_server(tmp, python_tar, f"eg-{tag}", *args)
        the_world = World(
            srv, f"eg-{tag}", f"allowed.{tag}.test", f"denied.{tag}.test", bridge, ns, args
        )
        try:
            yield the_world
        finally:
            stop_server(the_world.server)  # the one the last test restarted, if it did
            remove_all_sandboxes(srv.data_dir)


@dataclass
class Box:
    world: World
    id: str
    name: str

    def run(self, command: str) -> tuple[int, str, float]:
        """Exit code, stdout+stderr and seconds taken of a shell command in the sandbox."""
        began = time.monotonic()
        with self.world.server.http() as http:
            r = http.post(f"/dp/{self.id}/execute", json={"command": command, "timeout": 30})
        assert r.status_code == 200, r.text
        out = r.json()
        return out["exit_code"], out["stdout"] + out["stderr"], time.monotonic() - began

    def get(self, url: str) -> tuple[bool, str, float]:
        """Did ``wget`` fetch ``url`` (TLS unverified), its output, and how long it took."""
        code, out, took = self.run(f"python3 -c {shlex.quote(CLIENT)} get {url}")
        return code == 0, out, took

    def udp(self, ip: str) -> tuple[bool, str]:
        """Did a DNS question over UDP to ``ip`` get an answer."""
        code, out, _ = self.run(f"python3 -c {shlex.quote(CLIENT)} udp {ip}")
        return code == 0 and out == "192.0.2.1\n", out

    def patch(self, proxy_config: dict[str, Any]) -> Any:
        with self.world.server.http() as http:
            return http.patch(f"{BOXES}/{self.name}", json={"proxy_config": proxy_config})


@pytest.fixture
def box_factory(world: World) -> Iterator[Any]:
    made: list[str] = []

    def make(access_control: dict[str, Any], hosts: str | None = None) -> Box:
        name = f"eg-{uuid.uuid4().hex[:8]}"
        body = {
            "template_name": world.template,
            "name": name,
            "proxy_config": {"rules": [], "access_control": access_control},
        }
        with world.server.http() as http:
            r = http.post(BOXES, json=body)
        assert r.status_code == 201, r.text
        made.append(name)
        box = Box(world, r.json()["id"], name)
        tag = world.allowed.split(".")[1]
        lines = hosts if hosts is not None else _hosts_lines(tag)
        assert box.run(f"printf '{lines}' >> /etc/hosts")[0] == 0
        return box

    yield make
    with world.server.http() as http:
        for name in made:
            http.delete(f"{BOXES}/{name}")


def _refused(box: Box, url: str) -> None:
    ok, out, took = box.get(url)
    assert not ok, f"{url} was reachable: {out}"
    assert took < FAST, f"{url}: refusal took {took:.1f}s ({out})"


def test_allow_list_by_name_lets_only_that_host_through(world: World, box_factory: Any) -> None:
    """With an allow list of one name, that host answers over HTTP and HTTPS (TLS end to end);
    another name, an unnamed IP and a CIDR's address are refused at once."""
    box = box_factory({"allow_list": [world.allowed]})
    for scheme in ("http", "https"):
        ok, out, _ = box.get(f"{scheme}://{world.allowed}/")
        assert ok and out == f"hello from {NET}.10\n", out
        _refused(box, f"{scheme}://{world.denied}/")
        _refused(box, f"{scheme}://{NET}.40/")
        _refused(box, f"{scheme}://{NET}.10/")  # its address, but no allowed name was given
    # Each refusal by the proxy is logged with the sandbox's running count.
    assert wait_until(lambda: f"egress denied: sandbox {box.id}" in world.server.log.read_text())


def test_a_name_is_only_trusted_for_its_own_address(world: World, box_factory: Any) -> None:
    """A sandbox whose own /etc/hosts points the allowed name at another address is refused
    (Host and SNI say allowed, the destination is not what the name resolves to)."""
    box = box_factory({"allow_list": [world.allowed]}, hosts=f"{NET}.20 {world.allowed}\n")
    _refused(box, f"http://{world.allowed}/")
    _refused(box, f"https://{world.allowed}/")


def test_deny_list_by_name_ip_and_cidr(world: World, box_factory: Any) -> None:
    """A deny list alone: the listed name, IP and CIDR are refused (TCP and UDP), everything
    else stays reachable."""
    box = box_factory({"deny_list": [world.denied, f"{NET}.40", f"{NET}.192/26"]})
    assert box.get(f"http://{world.allowed}/")[0]
    assert box.get(f"https://{world.allowed}/")[0]
    _refused(box, f"http://{world.denied}/")
    _refused(box, f"https://{world.denied}/")
    _refused(box, f"http://{NET}.40/")
    _refused(box, f"http://{NET}.200/")
    ok, out = box.udp(f"{NET}.200")
    assert not ok and "Errno 113" in out, out  # UDP to a denied CIDR, refused at once
    ok, out = box.udp(f"{NET}.10")
    assert ok, out
    fchain, _ = chain_names(box.id)
    counters = sh("iptables", "-w", "-L", fchain, "-v", "-x", "-n")
    assert any(
        line.split()[2] == "REJECT" and int(line.split()[0]) > 0
        for line in counters.splitlines()[2:]
    ), counters


def test_udp_and_dns_only_to_allowed_ips_and_the_servers_resolver(
    world: World, box_factory: Any
) -> None:
    """UDP goes only to allowed IPs and to the resolver the server configured; a DNS server of
    the sandbox's own choosing is unreachable."""
    box = box_factory({"allow_list": [world.allowed, f"{NET}.10"]})
    ok, out = box.udp(f"{NET}.10")
    assert ok, out
    ok, out = box.udp(f"{NET}.53")
    assert ok, out
    ok, out = box.udp(f"{NET}.20")
    # Refused at once (ICMP admin-prohibited: EHOSTUNREACH), not a timeout.
    assert not ok and "Errno 113" in out, out
    assert box.get(f"http://{NET}.10/")[0]  # the allowed IP, dialled directly


def test_patch_flips_a_denied_host_to_allowed(world: World, box_factory: Any) -> None:
    """PATCH proxy_config on a running sandbox takes effect for the next connection, both ways."""
    box = box_factory({"allow_list": [world.allowed]})
    _refused(box, f"http://{world.denied}/")
    r = box.patch({"access_control": {"allow_list": [world.allowed, world.denied]}})
    assert r.status_code == 200, r.text
    ok, out, _ = box.get(f"http://{world.denied}/")
    assert ok and out == f"hello from {NET}.20\n", out
    r = box.patch({"access_control": {"deny_list": [world.allowed]}})
    assert r.status_code == 200, r.text
    _refused(box, f"https://{world.allowed}/")
    assert box.get(f"http://{NET}.40/")[0]
    r = box.patch({"rules": []})  # no access control: unrestricted
    assert r.status_code == 200, r.text
    assert box.get(f"https://{world.allowed}/")[0]


@pytest.mark.parametrize(
    "entry", ["exa mple.com", "~(unclosed", "10.0.0.0/33", "*.", "1.2.3.999", "", 7]
)
def test_a_bad_entry_is_a_400_naming_it(world: World, entry: object) -> None:
    """A malformed allow-list entry answers 400 in the envelope, naming the entry; nothing is
    created."""
    body = {"template_name": world.template, "proxy_config": {"access_control": {
        "allow_list": ["ok.example", entry]}}}  # fmt: skip
    with world.server.http() as http:
        before = len(http.get(BOXES).json()["sandboxes"])
        r = http.post(BOXES, json=body)
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert detail["error"] == "BadRequest"
        assert repr(entry)[:12].strip("'") in detail["message"] or str(entry) in detail["message"]
        assert len(http.get(BOXES).json()["sandboxes"]) == before


def test_sdk_proxy_config_helpers_are_accepted(world: World) -> None:
    """The langsmith 0.15.1 SDK's proxy_config() builds a config the server enforces, and its
    update_sandbox(proxy_config=...) flips a host (SandboxNotReadyError on a stopped sandbox);
    its aws_auth and gcp_auth rules answer 501 naming the rule type."""
    script = f"""
import json
from langsmith.sandbox import proxy_config, aws_auth, gcp_auth, opaque_secret
print(json.dumps([
    proxy_config(access_control={{"allow_list": ["{world.allowed}"]}}),
    proxy_config(rules=[aws_auth(access_key_id=opaque_secret("a"),
                                 secret_access_key=opaque_secret("b"))]),
    proxy_config(rules=[gcp_auth(service_account_json=opaque_secret("{{}}"),
                                 scopes=["s"])]),
]))
"""
    out = subprocess.run([str(SDK_PYTHON), "-c", script], check=True, capture_output=True)
    allow, aws, gcp = json.loads(out.stdout)
    with world.server.http() as http:
        for config, feature in ((aws, "AWS"), (gcp, "GCP")):
            r = http.post(BOXES, json={"template_name": world.template, "proxy_config": config})
            assert r.status_code == 501, r.text
            assert feature in r.json()["detail"]["message"]
        name = f"eg-{uuid.uuid4().hex[:8]}"
        r = http.post(
            BOXES, json={"template_name": world.template, "name": name, "proxy_config": allow}
        )
        assert r.status_code == 201, r.text
        box = Box(world, r.json()["id"], name)
        try:
            tag = world.allowed.split(".")[1]
            box.run(f"printf '{_hosts_lines(tag)}' >> /etc/hosts")
            assert box.get(f"https://{world.allowed}/")[0]
            _refused(box, f"https://{world.denied}/")
            update = f"""
from langsmith.sandbox import SandboxClient, SandboxNotReadyError, proxy_config
c = SandboxClient(api_endpoint="{world.server.base}", api_key="{world.server.key}")
both = proxy_config(access_control={{"allow_list": ["{world.allowed}", "{world.denied}"]}})
c.stop_sandbox("{name}")
try:
    c.update_sandbox("{name}", proxy_config=both)
except SandboxNotReadyError:
    print("not ready")
c.start_sandbox("{name}")
c.update_sandbox("{name}", proxy_config=both)
print("updated")
"""
            out = subprocess.run([str(SDK_PYTHON), "-c", update], capture_output=True, text=True)
            assert out.stdout == "not ready\nupdated\n", out.stderr
            box.run(f"printf '{_hosts_lines(tag)}' >> /etc/hosts")  # a start boots afresh
            ok, body, _ = box.get(f"https://{world.denied}/")
            assert ok and body == f"hello from {NET}.20\n", body
        finally:
            http.delete(f"{BOXES}/{name}")


def test_the_proxy_never_dials_into_a_bridge_of_the_host(world: World, box_factory: Any) -> None:
    """A host behind another bridge of the host (Docker's, say), made after the sandbox's rules,
    is refused through the proxy as hutch's FORWARD chain refuses it without a policy."""
    box = box_factory({"deny_list": [world.denied]})  # a denied name: all TCP meets the proxy
    tag = secrets.token_hex(3)
    br, host_end, ns_end = f"hob{tag}", f"hoh{tag}", f"hon{tag}"
    ns = world.ns
    subnet = f"198.18.{secrets.randbelow(250) + 1}"
    try:
        sh("ip", "link", "add", br, "type", "bridge")
        sh("ip", "addr", "add", f"{subnet}.1/24", "dev", br)
        sh("ip", "link", "set", br, "up")
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        sh("ip", "link", "set", host_end, "master", br, "up")
        sh("ip", "link", "set", ns_end, "netns", ns)
        sh("ip", "-n", ns, "addr", "add", f"{subnet}.2/24", "dev", ns_end)
        sh("ip", "-n", ns, "link", "set", ns_end, "up")
        # The host itself reaches it: only the sandbox is refused.
        assert "hello from" in sh("curl", "-s", "-m", "5", f"http://{subnet}.2/")
        _refused(box, f"http://{subnet}.2/")
        assert box.get(f"http://{world.allowed}/")[0]
    finally:
        sh("ip", "link", "del", host_end, check=False)
        sh("ip", "link", "del", br, check=False)


def test_policy_survives_stop_start_and_a_server_restart(world: World, box_factory: Any) -> None:
    """A stopped sandbox gets its access control back when started, and a sandbox kept running
    across a server restart gets it back from the next server (the module's server is replaced
    by the restarted one for the tests after)."""
    box = box_factory({"allow_list": [world.allowed]})
    with world.server.http() as http:
        assert http.post(f"{BOXES}/{box.name}/stop").status_code == 200
        assert http.post(f"{BOXES}/{box.name}/start").status_code == 200
    tag = world.allowed.split(".")[1]
    box.run(f"printf '{_hosts_lines(tag)}' >> /etc/hosts")  # a start boots afresh
    assert box.get(f"https://{world.allowed}/")[0]
    _refused(box, f"https://{world.denied}/")
    srv = world.server
    stop_server(srv)
    world.server = start_server(srv.data_dir, *world.args)
    assert box.get(f"http://{world.allowed}/")[0]
    _refused(box, f"http://{world.denied}/")
    _refused(box, f"http://{NET}.40/")


LISTENER = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(512)
    print(data.decode(), peer[0], flush=True)
    if data == b"end":
        break
"""


def test_a_forged_source_address_does_not_slip_past_the_rules(
    world: World, box_factory: Any
) -> None:
    """The sandbox has CAP_NET_RAW: a datagram it forges from another address of its subnet to
    a destination its policy refuses is dropped, not forwarded under the other address."""
    box = box_factory({"allow_list": [world.allowed, f"{NET}.10"]})
    listener = subprocess.Popen(
        ["ip", "netns", "exec", world.ns, sys.executable, "-c", LISTENER],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None and listener.stdout.readline() == "ready\n"
        code, out, _ = box.run(f"python3 -c {shlex.quote(CLIENT)} spoof {NET}.20 {NET}.10")
        assert code == 0, out
        # "end" comes by the allowed path after the forged datagram: it was dropped if "end"
        # is all that arrived.
        assert listener.stdout.readline().split()[0] == "end"
    finally:
        listener.kill()
        listener.wait()
        if listener.stdout is not None:
            listener.stdout.close()


def test_glob_and_regex_entries(world: World, box_factory: Any) -> None:
    """``*.<tag>.test`` allows both names, a ``~regex`` deny entry removes one (deny wins); the
    regex runs off the proxy's event loop and answers as the glob does."""
    tag = world.allowed.split(".")[1]
    box = box_factory(
        {"allow_list": [f"*.{tag}.test"], "deny_list": [rf"~^den[a-z]+\.{tag}\.test$"]}
    )
    assert box.get(f"https://{world.allowed}/")[0]
    _refused(box, f"https://{world.denied}/")
    _refused(box, f"http://{world.denied}/")


def _plain_box(world: World, **body: Any) -> Box:
    """A sandbox created with ``body`` (no proxy_config unless given), names in its hosts."""
    name = f"eg-{uuid.uuid4().hex[:8]}"
    with world.server.http() as http:
        r = http.post(BOXES, json={"template_name": world.template, "name": name, **body})
    assert r.status_code == 201, r.text
    box = Box(world, r.json()["id"], name)
    tag = world.allowed.split(".")[1]
    assert box.run(f"printf '{_hosts_lines(tag)}' >> /etc/hosts")[0] == 0
    return box


def test_a_templates_proxy_config_is_its_sandboxes_default(world: World) -> None:
    """A template's proxy_config (access control only) applies to its sandboxes that name none
    and is shown by GET; a sandbox's own replaces it; header rules on a template are a 400."""
    tpl = f"egd-{uuid.uuid4().hex[:6]}"
    default = {"access_control": {"allow_list": [world.allowed]}}
    body = {"name": tpl, "image": "local/python", "network": "egress", "proxy_config": default}
    with world.server.http() as http:
        r = http.post("/v2/sandboxes/templates", json=body)
        assert r.status_code == 201, r.text
        assert r.json()["proxy_config"] == default
        assert http.get(f"/v2/sandboxes/templates/{tpl}").json()["proxy_config"] == default
        rules = [{"name": "x", "match_hosts": [world.allowed], "headers": []}]
        bad = http.post(
            "/v2/sandboxes/templates",
            json={**body, "name": f"{tpl}-r", "proxy_config": {"rules": rules}},
        )
        assert bad.status_code == 400 and "access_control only" in bad.text, bad.text
    made = []
    try:
        box = _plain_box(world, template_name=tpl)
        made.append(box)
        with world.server.http() as http:
            shown = http.get(f"{BOXES}/{box.name}").json()["proxy_config"]
            assert shown["access_control"] == default["access_control"]
        assert box.get(f"http://{world.allowed}/")[0]
        _refused(box, f"http://{world.denied}/")
        own = _plain_box(
            world,
            template_name=tpl,
            proxy_config={"access_control": {"deny_list": [world.allowed]}},
        )
        made.append(own)
        assert own.get(f"http://{world.denied}/")[0]
        _refused(own, f"http://{world.allowed}/")
    finally:
        with world.server.http() as http:
            for b in made:
                http.delete(f"{BOXES}/{b.name}")
            http.delete(f"/v2/sandboxes/templates/{tpl}")


def test_the_servers_default_proxy_config(world: World) -> None:
    """``hutch serve --default-proxy-config`` applies to sandboxes whose create and template
    name none; a sandbox's own replaces it (the module's server is restarted with the flag, then
    without it)."""
    default = {"access_control": {"deny_list": [world.denied]}}
    srv = world.server
    stop_server(srv)
    world.server = start_server(
        srv.data_dir, *world.args, "--default-proxy-config", json.dumps(default)
    )
    made = []
    try:
        box = _plain_box(world)
        made.append(box)
        assert box.get(f"http://{world.allowed}/")[0]
        _refused(box, f"http://{world.denied}/")
        own = _plain_box(world, proxy_config={"access_control": {}})
        made.append(own)
        assert own.get(f"http://{world.denied}/")[0]
    finally:
        with world.server.http() as http:
            for b in made:
                http.delete(f"{BOXES}/{b.name}")
        stop_server(world.server)
        world.server = start_server(srv.data_dir, *world.args)
