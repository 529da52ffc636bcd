"""Sandbox networks on the runc runtime: ``none`` and ``egress`` (CNI bridge, NAT, isolation).

"The outside" is a network namespace of the test's own, joined to the host by a veth pair and
routed (203.0.113.0/24, TEST-NET-3): no internet is needed. Each module run uses its own bridge
and subnet, so it never touches a server's ``hutch0``. Host-side facts (ports, neighbour entries,
iptables, IPAM files) are read from the kernel and the files, not from hutch.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hutch.runtime._interface import ExecSpec, NetworkMode, Process, SandboxSpec
from hutch.runtime.images import Image, ImageStore
from hutch.runtime.runc import RuncRuntime
from hutch.runtime.runc._network import (
    Attachment,
    EgressConfig,
    HostPort,
    bridge_ports,
    resolv_conf,
    setup_host,
    teardown_host,
)
from tests.conftest import OUTPUT, TIME_SCALE, wait_until

pytestmark = [pytest.mark.root, pytest.mark.asyncio(loop_scope="session")]

QUICK = 10 * TIME_SCALE
OUTSIDE_HOST, OUTSIDE_PEER = "203.0.113.1", "203.0.113.2"
OUTSIDE_PORT = 9000
#: Replies "peer <source address>" to every connection: what the outside sees of a sandbox.
OUTSIDE_SERVER = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{OUTSIDE_PEER}", {OUTSIDE_PORT}))
s.listen(64)
print("ready", flush=True)
while True:
    c, (host, _port) = s.accept()
    c.sendall(f"peer {{host}}\\n".encode())
    c.close()
"""


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True).stdout


# -- fixtures for the real thing ---------------------------------------------------------------


@dataclass
class Outside:
    """A routed network namespace standing in for the internet."""

    netns: str
    host_veth: str


@pytest.fixture(scope="module")
def outside() -> Iterator[Outside]:
    """203.0.113.2 in a namespace of its own, a TCP server on it that reports its peers."""
    tag = secrets.token_hex(3)
    ns, host_if, peer_if = f"hutch-out-{tag}", f"hto{tag}", f"htp{tag}"
    # The bridge plugin turns IPv4 forwarding on (and hutch leaves it on); the test puts it back.
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    sh("ip", "netns", "add", ns)
    server = None
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        sh("ip", "link", "set", peer_if, "netns", ns)
        sh("ip", "addr", "add", f"{OUTSIDE_HOST}/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{OUTSIDE_PEER}/24", "dev", peer_if)
        sh("ip", "-n", ns, "link", "set", peer_if, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", OUTSIDE_SERVER],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        yield Outside(ns, host_if)
    finally:
        if server is not None:
            server.kill()
            server.wait()
            assert server.stdout is not None
            server.stdout.close()
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", host_if, check=False)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(forwarding)


class _Hello(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"host-service-42\n")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def host_services() -> Iterator[tuple[int, int]]:
    """Two services of the host on every address (0.0.0.0): (allowed port, blocked port)."""
    servers = [_Server(("0.0.0.0", 0), _Hello) for _ in range(2)]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield servers[0].server_address[1], servers[1].server_address[1]
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


@pytest.fixture(scope="module")
def other_bridge() -> Iterator[str]:
    """Another container bridge of the host (a Docker-like network), with an address."""
    name, addr = f"htb{secrets.token_hex(3)}", f"198.18.{secrets.randbelow(250) + 1}.1/24"
    sh("ip", "link", "add", name, "type", "bridge")
    try:
        sh("ip", "addr", "add", addr, "dev", name)
        sh("ip", "link", "set", name, "up")
        yield addr.split("/")[0]
    finally:
        sh("ip", "link", "del", name, check=False)


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path, python_tar: Path
) -> dict[str, Image]:
    store = ImageStore(tmp_path_factory.mktemp("net-images") / "store")
    return {
        "busybox": store.import_path("local/busybox", busybox_tar),
        "python": store.import_path("local/python", python_tar),
    }


def own_config(**kw: object) -> EgressConfig:
    """A bridge and subnet of this test run's own."""
    return EgressConfig(
        bridge=f"hnt{secrets.token_hex(3)}",
        subnet=f"10.252.{secrets.randbelow(250) + 1}.0/24",
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
async def rt(
    tmp_path_factory: pytest.TempPathFactory,
    outside: Outside,
    host_services: tuple[int, int],
    other_bridge: str,
) -> AsyncIterator[RuncRuntime]:
    """A runtime whose egress network allows the first host service's port."""
    allowed, _ = host_services
    cfg = own_config(allow_host_ports=(HostPort(allowed),))
    runtime = RuncRuntime(tmp_path_factory.mktemp("net") / "data", network=cfg)
    try:
        yield runtime
    finally:
        for sandbox_id in await runtime.list_ids():
            await runtime.delete(sandbox_id)
        await runtime.aclose()


async def create(runtime: RuncRuntime, image: Image, network: NetworkMode) -> str:
    sandbox_id = uuid.uuid4().hex
    spec = SandboxSpec(
        id=sandbox_id, hostname=f"net-{sandbox_id[:6]}", image=image, network=network
    )
    await runtime.create(spec)
    return sandbox_id


async def run(runtime: RuncRuntime, sandbox_id: str, script: str) -> tuple[int, str]:
    """``sh -c script`` in the sandbox: (exit code, stdout + stderr)."""
    return await run_argv(runtime, sandbox_id, ["/bin/sh", "-c", script])


async def run_argv(runtime: RuncRuntime, sandbox_id: str, argv: list[str]) -> tuple[int, str]:
    proc = await runtime.exec(sandbox_id, ExecSpec(argv=argv))
    try:
        async with asyncio.timeout(3 * QUICK):
            assert proc.stderr is not None
            out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
            code = await proc.wait()
    finally:
        await proc.close()
    return code, (out + err).decode()


async def start(runtime: RuncRuntime, sandbox_id: str, argv: list[str]) -> Process:
    return await runtime.exec(sandbox_id, ExecSpec(argv=argv))


def attachment(runtime: RuncRuntime, sandbox_id: str) -> Attachment:
    att = runtime.network.attachment(sandbox_id)
    assert att is not None
    return att


def host_ipv4_addresses(exclude: str) -> list[str]:
    """Every IPv4 address of the host but loopback ones and those on ``exclude``."""
    found = []
    for link in json.loads(sh("ip", "-j", "-4", "addr", "show")):
        if link["ifname"] == exclude:
            continue
        for a in link.get("addr_info", []):
            if not ipaddress.IPv4Address(a["local"]).is_loopback:
                found.append(a["local"])
    return found


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def host_ping(addr: str) -> bool:
    """One ICMP echo from the host (raw socket; the host may have no ping binary)."""
    echo = struct.pack("!BBHHH", 8, 0, 0, 0x4854, 1) + b"hutch"
    echo = echo[:2] + struct.pack("!H", _checksum(echo)) + echo[4:]
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(QUICK)
        s.sendto(echo, (addr, 0))
        while True:
            pkt, (src, _) = s.recvfrom(2048)
            if src == addr and pkt[(pkt[0] & 0xF) * 4] == 0:
                return True


def host_reaches(addr: str, port: int) -> bool:
    with socket.create_connection((addr, port), timeout=QUICK) as s:
        return s.recv(64) == b"host-service-42\n"


# -- none and egress ---------------------------------------------------------------------------


async def test_none_sandbox_has_only_loopback(rt: RuncRuntime, images: dict[str, Image]) -> None:
    """``none``: the only interface is lo (up), no route, the resolver file says there is none."""
    sandbox_id = await create(rt, images["busybox"], "none")
    assert await run(rt, sandbox_id, "ls /sys/class/net") == (0, "lo\n")
    code, routes = await run(rt, sandbox_id, "ip -4 route")
    assert (code, routes) == (0, "")
    code, lo = await run(rt, sandbox_id, "ip -4 addr show lo")
    assert "inet 127.0.0.1/8" in lo and "UP" in lo
    assert rt.network.attachment(sandbox_id) is None
    assert not rt.network.has(sandbox_id)
    await rt.delete(sandbox_id)


async def test_egress_sandbox_gets_an_address_and_a_default_route(
    rt: RuncRuntime, images: dict[str, Image]
) -> None:
    """``egress``: eth0 carries an address of the subnet, the default route goes via the bridge,
    lo is up, resolv.conf carries the resolvers hutch computed for the host, and the sandbox
    cannot change any of it."""
    sandbox_id = await create(rt, images["busybox"], "egress")
    att = attachment(rt, sandbox_id)
    cfg = rt.network.config
    assert att.address.ip in cfg.network and att.gateway == cfg.gateway
    assert await run(rt, sandbox_id, "ls /sys/class/net") == (0, "eth0\nlo\n")
    _, addr = await run(rt, sandbox_id, "ip -4 addr show eth0")
    assert f"inet {att.address}" in addr
    _, routes = await run(rt, sandbox_id, "ip -4 route")
    assert f"default via {cfg.gateway} dev eth0" in routes
    _, lo = await run(rt, sandbox_id, "ip -4 addr show lo")
    assert "inet 127.0.0.1/8" in lo
    assert await run(rt, sandbox_id, "cat /etc/resolv.conf") == (0, resolv_conf(cfg))
    # Its root cannot re-address or re-route itself (no CAP_NET_ADMIN).
    for change in (
        "ip addr add 10.254.254.254/32 dev eth0",
        "ip link set eth0 address 02:00:00:00:00:01",
        "ip route replace default via 10.254.254.254 dev eth0 onlink",
    ):
        code, out = await run(rt, sandbox_id, change)
        assert code != 0 and "not permitted" in out, (change, out)
    # The host side: an isolated port of the bridge, a pinned neighbour entry, no IPv6.
    assert att.host_veth in bridge_ports(cfg.bridge)
    brport = Path(f"/sys/class/net/{att.host_veth}/brport")
    assert (brport / "isolated").read_text().strip() == "1"
    neigh = sh("ip", "neigh", "show", str(att.address.ip), "dev", cfg.bridge)
    assert att.mac in neigh and "PERMANENT" in neigh
    assert Path(f"/proc/sys/net/ipv6/conf/{cfg.bridge}/disable_ipv6").read_text() == "1\n"
    assert "inet6" not in sh("ip", "addr", "show", "dev", cfg.bridge)
    await rt.delete(sandbox_id)


async def test_egress_reaches_the_outside_through_nat(
    rt: RuncRuntime, images: dict[str, Image], outside: Outside
) -> None:
    """A TCP server outside answers the sandbox and sees the host's address, not the sandbox's."""
    sandbox_id = await create(rt, images["busybox"], "egress")
    code, out = await run(rt, sandbox_id, f"nc -w 5 {OUTSIDE_PEER} {OUTSIDE_PORT} </dev/null")
    assert (code, out) == (0, f"peer {OUTSIDE_HOST}\n")
    assert str(attachment(rt, sandbox_id).address.ip) not in out
    code, out = await run(rt, sandbox_id, f"ping -c 1 -W 5 {OUTSIDE_PEER}")
    assert code == 0, out
    await rt.delete(sandbox_id)


async def test_none_sandbox_cannot_reach_the_outside(
    rt: RuncRuntime, images: dict[str, Image], outside: Outside
) -> None:
    """The same connection from a ``none`` sandbox fails: there is no route at all."""
    sandbox_id = await create(rt, images["busybox"], "none")
    code, out = await run(rt, sandbox_id, f"nc -w 2 {OUTSIDE_PEER} {OUTSIDE_PORT} </dev/null")
    assert code != 0 and "peer" not in out
    await rt.delete(sandbox_id)


async def test_sandboxes_cannot_reach_each_other(rt: RuncRuntime, images: dict[str, Image]) -> None:
    """B's service answers the host but not A: not over TCP, not by ping, not over IPv6
    link-local."""
    a = await create(rt, images["busybox"], "egress")
    b = await create(rt, images["busybox"], "egress")
    b_ip = str(attachment(rt, b).address.ip)
    service = await start(rt, b, ["sh", "-c", "while true; do echo hi | nc -l -p 7000; done"])
    try:

        def host_hears_b() -> bool:
            try:
                with socket.create_connection((b_ip, 7000), timeout=1) as s:
                    return s.recv(10) == b"hi\n"
            except OSError:
                return False

        assert wait_until(host_hears_b, QUICK), "B's service never answered the host"
        code, out = await run(rt, a, f"nc -w 1 {b_ip} 7000 </dev/null")
        assert code != 0 and "hi" not in out
        code, out = await run(rt, a, f"ping -c 1 -W 1 {b_ip}")
        assert code != 0, out
        _, six = await run(rt, b, "ip -6 addr show dev eth0 scope link")
        b_ll = six.split("inet6 ")[1].split("/")[0]
        code, out = await run(rt, a, f"ping6 -c 1 -W 1 {b_ll}%eth0")
        assert code != 0, out
    finally:
        await service.kill()
        await service.close()
    await rt.delete(a)
    await rt.delete(b)


async def test_host_services_are_unreachable_except_allowed_ports(
    rt: RuncRuntime,
    images: dict[str, Image],
    host_services: tuple[int, int],
    other_bridge: str,
) -> None:
    """The host answers on all its addresses (bridge, primary, the outside veth, another
    bridge), yet a sandbox is refused on each unless the port is allowed; 127.0.0.1 inside is
    the sandbox's own."""
    allowed, blocked = host_services
    sandbox_id = await create(rt, images["busybox"], "egress")
    gateway = str(rt.network.config.gateway)
    addresses = [gateway, *host_ipv4_addresses(exclude=rt.network.config.bridge)]
    assert other_bridge in addresses and OUTSIDE_HOST in addresses
    for addr in addresses:
        assert host_reaches(addr, blocked), f"host's own service does not answer on {addr}"
    probe = "; ".join(
        f"echo {addr} $(nc -w 2 {addr} {blocked} </dev/null 2>&1)" for addr in addresses
    )
    _, out = await run(rt, sandbox_id, probe)
    assert len(out.splitlines()) == len(addresses)
    for line in out.splitlines():
        assert "host-service-42" not in line, f"a sandbox reached the host's service: {line}"
    code, out = await run(rt, sandbox_id, f"nc -w 2 127.0.0.1 {blocked} </dev/null")
    assert code != 0 and "host-service-42" not in out
    code, out = await run(rt, sandbox_id, f"nc -w 5 {gateway} {allowed} </dev/null")
    assert (code, out) == (0, "host-service-42\n")
    await rt.delete(sandbox_id)


#: Runs in sandbox A (python, CAP_NET_RAW): forged ARP claiming B's address, a frame with B's
#: MAC as source, and ICMP echo to B sent to the host's MAC for the host to route back.
FORGER = r"""
import socket, struct, sys
b_ip, b_mac, gw_ip, gw_mac, a_ip = sys.argv[1:]
mac = lambda s: bytes.fromhex(s.replace(":", ""))
ip = socket.inet_aton
own = mac(open("/sys/class/net/eth0/address").read().strip())
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
def csum(b):
    b += b"\0" * (len(b) % 2)
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xFFFF)
    return ~(t + (t >> 16)) & 0xFFFF
for _ in range(3):
    # Gratuitous ARP and an unsolicited reply to the gateway: "B's address is at my MAC".
    gratuitous = (1, b"\xff" * 6, b"\0" * 6, ip(b_ip))
    reply = (2, mac(gw_mac), mac(gw_mac), ip(gw_ip))
    for op, dst, tha, tpa in (gratuitous, reply):
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, own, ip(b_ip), tha, tpa)
        s.send(dst + own + b"\x08\x06" + arp)
    # B's MAC as source: the bridge must not learn B's MAC on this port.
    s.send(b"\xff" * 6 + mac(b_mac) + b"\x88\xb5" + b"hutch-test" + b"\0" * 36)
    # ICMP echo to B, addressed to the host's MAC: the host would route it back into the bridge.
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"hairpin"
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, ip(a_ip), ip(b_ip))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    s.send(mac(gw_mac) + own + b"\x08\x00" + hdr + icmp)
print("sent")
"""

#: Runs in sandbox B: counts ICMP echo requests per source address for a few seconds.
LISTENER = r"""
import json, socket, sys, time
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
r.settimeout(0.1)
seen = {}
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        pkt, (src, _) = r.recvfrom(2048)
    except socket.timeout:
        continue
    if pkt[(pkt[0] & 0xF) * 4] == 8:
        seen[src] = seen.get(src, 0) + 1
print(json.dumps(seen), flush=True)
"""


async def test_forged_frames_do_not_reach_or_hijack_a_neighbour(
    rt: RuncRuntime, images: dict[str, Image]
) -> None:
    """Sandbox A with raw sockets claims B's address by ARP, sends with B's MAC, and bounces
    ICMP to B off the host: the host still maps B's address to B's MAC, the bridge still has B's
    MAC on B's port, and B sees the host's ping but nothing from A."""
    a = await create(rt, images["python"], "egress")
    b = await create(rt, images["python"], "egress")
    att_a, att_b = attachment(rt, a), attachment(rt, b)
    bridge = rt.network.config.bridge
    gw_mac = Path(f"/sys/class/net/{bridge}/address").read_text().strip()
    listener = await start(rt, b, ["python3", "-c", LISTENER, str(3 * TIME_SCALE)])
    try:
        assert await asyncio.wait_for(listener.stdout.readline(), QUICK) == b"ready\n"
        # The host's ping teaches the bridge where B's MAC is and proves the listener counts.
        assert await asyncio.to_thread(host_ping, str(att_b.address.ip))
        argv = [str(att_b.address.ip), att_b.mac, str(att_a.gateway), gw_mac, str(att_a.address.ip)]
        code, out = await run_argv(rt, a, ["python3", "-c", FORGER, *argv])
        assert (code, out) == (0, "sent\n")
        seen = json.loads(await asyncio.wait_for(listener.stdout.readline(), 2 * QUICK))
        assert await listener.wait() == 0
    finally:
        await listener.kill()
        await listener.close()
    assert seen.get(str(att_a.gateway), 0) >= 1, seen
    assert str(att_a.address.ip) not in seen, seen
    neigh = sh("ip", "neigh", "show", str(att_b.address.ip), "dev", bridge)
    assert att_b.mac in neigh and "PERMANENT" in neigh, neigh
    fdb = [
        line
        for line in sh("bridge", "fdb", "show", "br", bridge).splitlines()
        if line.startswith(att_b.mac)
    ]
    assert fdb and all(f"dev {att_b.host_veth} " in line for line in fdb), fdb
    await rt.delete(a)
    await rt.delete(b)


async def test_delete_removes_veth_netns_address_and_nat(
    rt: RuncRuntime, images: dict[str, Image], tmp_path: Path
) -> None:
    """Deleting an egress sandbox removes its veth, its namespace, its IPAM allocation, its NAT
    rules and neighbour entry; a fresh runtime with other options does it too (orphan after a
    restart)."""
    for deleter in ("same", "fresh"):
        sandbox_id = await create(rt, images["busybox"], "egress")
        att = attachment(rt, sandbox_id)
        ipam = rt.network.ipam_dir / "hutch" / str(att.address.ip)
        assert ipam.read_text().startswith(sandbox_id)
        assert Path(f"/sys/class/net/{att.host_veth}").exists()
        assert att.netns.exists()
        assert sandbox_id in sh("iptables", "-t", "nat", "-S")
        if deleter == "same":
            await rt.delete(sandbox_id)
        else:
            data = rt.bundles.parent
            other = RuncRuntime(data, network=EgressConfig(bridge="hutchx9", subnet="10.9.0.0/24"))
            assert sandbox_id in await other.list_ids()
            await other.delete(sandbox_id)
            assert not Path("/sys/class/net/hutchx9").exists()
        assert not Path(f"/sys/class/net/{att.host_veth}").exists()
        assert not att.netns.exists() and not rt.network.has(sandbox_id)
        assert not ipam.exists()
        assert sandbox_id not in sh("iptables", "-t", "nat", "-S")
        assert sandbox_id not in sh("nft", "list", "ruleset")
        assert str(att.address.ip) not in sh("ip", "neigh", "show", "dev", att.bridge)
        assert sandbox_id not in await rt.list_ids()


async def test_stop_releases_the_network_and_start_plugs_it_in_again(
    rt: RuncRuntime, images: dict[str, Image], outside: Outside
) -> None:
    """A stopped egress sandbox has no veth, namespace or address; started again it has eth0
    and reaches the outside."""
    sandbox_id = uuid.uuid4().hex
    spec = SandboxSpec(
        id=sandbox_id, hostname="net-stop", image=images["busybox"], network="egress"
    )
    await rt.create(spec)
    att = attachment(rt, sandbox_id)
    ipam = rt.network.ipam_dir / "hutch" / str(att.address.ip)
    await rt.stop(sandbox_id)
    assert not Path(f"/sys/class/net/{att.host_veth}").exists()
    assert not att.netns.exists() and not ipam.exists() and not rt.network.has(sandbox_id)
    await rt.start(spec)
    assert await run(rt, sandbox_id, "ls /sys/class/net") == (0, "eth0\nlo\n")
    probe = f"nc -w 5 {OUTSIDE_PEER} {OUTSIDE_PORT} </dev/null"
    assert await run(rt, sandbox_id, probe) == (0, f"peer {OUTSIDE_HOST}\n")
    await rt.delete(sandbox_id)
    assert not rt.network.has(sandbox_id)


async def test_concurrent_creates_get_distinct_addresses(
    rt: RuncRuntime, images: dict[str, Image], outside: Outside
) -> None:
    """Four egress sandboxes created at once get four addresses and all reach the outside;
    deleted at once, every veth goes."""
    ids = await asyncio.gather(*(create(rt, images["busybox"], "egress") for _ in range(4)))
    atts = [attachment(rt, i) for i in ids]
    assert len({a.address.ip for a in atts}) == 4 and len({a.host_veth for a in atts}) == 4
    probe = f"nc -w 5 {OUTSIDE_PEER} {OUTSIDE_PORT} </dev/null"
    results = await asyncio.gather(*(run(rt, i, probe) for i in ids))
    assert results == [(0, f"peer {OUTSIDE_HOST}\n")] * 4
    await asyncio.gather(*(rt.delete(i) for i in ids))
    for att in atts:
        assert not Path(f"/sys/class/net/{att.host_veth}").exists()


async def test_create_latency_of_egress_against_none(
    rt: RuncRuntime, images: dict[str, Image]
) -> None:
    """Egress adds the namespace, two CNI plugins and the port hardening to a create; the figures
    are written to test-output/network-latency.txt (and stay well under a second)."""
    times: dict[str, list[float]] = {"none": [], "egress": []}
    for _ in range(5):
        for mode in ("none", "egress"):
            start_t = time.perf_counter()
            sandbox_id = await create(rt, images["busybox"], mode)  # type: ignore[arg-type]
            times[mode].append(time.perf_counter() - start_t)
            await rt.delete(sandbox_id)
    med = {mode: statistics.median(ts) * 1000 for mode, ts in times.items()}
    line = (
        f"create, median of 5: none {med['none']:.0f} ms, egress {med['egress']:.0f} ms, "
        f"egress adds {med['egress'] - med['none']:.0f} ms\n"
    )
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "network-latency.txt").write_text(line)
    print(line, end="")
    assert med["egress"] - med["none"] < 1000 * TIME_SCALE


async def test_close_removes_bridge_chains_and_rules(
    tmp_path: Path, images: dict[str, Image]
) -> None:
    """Once its last egress sandbox is gone, closing the runtime leaves no bridge, no hutch
    chain or jump, no NAT or MAC-check rule; with a sandbox left, they stay."""
    cfg = own_config()
    runtime = RuncRuntime(tmp_path / "data", network=cfg)
    try:
        sandbox_id = await create(runtime, images["busybox"], "egress")
        setup_host(cfg)  # again, as a restarted server does: the same rules, one jump each
        jumps = [
            line
            for line in sh("iptables", "-S").splitlines()
            if line.startswith(("-A INPUT", "-A FORWARD"))
        ]
        assert sorted(j for j in jumps if cfg.bridge in j) == sorted(
            f"-A {chain} {' '.join(rule)}" for chain, rule in cfg.jumps()
        )
        assert sh("iptables", "-S", cfg.input_chain).count("-j REJECT") == 2
        await runtime.aclose()  # a sandbox is left: its protection stays
        assert cfg.input_chain in sh("iptables", "-S")
        assert Path(f"/sys/class/net/{cfg.bridge}").exists()
        await runtime.delete(sandbox_id)
        await runtime.aclose()
        rules = sh("iptables", "-S") + sh("iptables", "-t", "nat", "-S")
        assert cfg.bridge not in rules and sandbox_id not in rules
        assert sandbox_id not in sh("nft", "list", "ruleset")
        assert not Path(f"/sys/class/net/{cfg.bridge}").exists()
        assert not list((tmp_path / "data" / "netns").iterdir())
        assert not list((tmp_path / "data" / "cni").glob("*.json"))
    finally:  # whatever a failure left
        for left in await runtime.list_ids():
            await runtime.delete(left)
        teardown_host(cfg)
