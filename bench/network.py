"""What egress networking adds to a sandbox's create-to-first-exec and delete.

    .venv/bin/python bench/network.py [--n 20] [--warmup 2] [--json]
    .venv/bin/python bench/network.py --proxy [--n 200] [--mib 256] [--json]

``--proxy``: what the egress proxy costs against direct NAT: connection latency (connect, one
HTTP request, the answer's first byte, close; ``--n`` times) and download throughput (``--mib``
MiB over one connection), measured by Python inside three sandboxes of the Debian image against
an HTTP server in a network namespace of its own: **direct** (no policy), **proxy** (an access
control with a denied name, so all TCP meets the proxy, which copies it) and **rules** (a header
rule for the server's name: the proxy parses each request's head and adds a header; the name is
in the host's ``/etc/hosts`` meanwhile, as the proxy checks it against the address dialled).

A real ``hutch serve`` on loopback (its own bridge and subnet, never ``hutch0``), two busybox
templates that differ only in ``network`` (``none`` and ``egress``). Each round creates a sandbox
of each (``create_sandbox(wait_for_ready=True)`` + ``run("true")``) and deletes it, the modes
alternating so drift on the machine hits both alike. Egress pays for the network namespace, the
CNI ``loopback`` and ``bridge`` plugins (veth, IPAM, NAT rules, MAC check) and the port hardening
(isolation, a permanent neighbour entry); delete pays for CNI DEL. Percentiles are nearest-rank.

Needs root. Everything lives under a temporary directory in /tmp, removed at the end; the bridge
and firewall chains go when the server stops, and IPv4 forwarding is put back as it was. Exit
status: 0, or 2 without root.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import (
    CACHE,
    REPO,
    Summary,
    ensure_busybox,
    import_image,
    remove_all_sandboxes,
    start_server,
    stop_server,
)

from hutch import SandboxClient

MODES = ("none", "egress")
FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")
HOSTS = Path("/etc/hosts")
#: The upstream's name (the Host of every request; a header rule's host).
UPSTREAM_NAME = "upstream.bench"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n",
        type=int,
        help="rounds, one sandbox of each mode (default 20); --proxy: connections (default 200)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="rounds not counted")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--proxy", action="store_true", help="the egress proxy against direct")
    parser.add_argument("--mib", type=int, default=256, help="--proxy: MiB downloaded")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/network.py needs root (runc, network namespaces, iptables)", file=sys.stderr)
        return 2
    if args.proxy:
        return proxy_bench(args.n or 200, args.mib, args.json)
    args.n = args.n or 20
    # The bridge plugin turns IPv4 forwarding on; the benchmark puts it back as it found it.
    forwarding = FORWARDING.read_text()
    tmp = Path(tempfile.mkdtemp(prefix="hutch-bench-net-"))
    data = tmp / "data"
    data.mkdir()
    import_image(data, "local/busybox", ensure_busybox())
    bridge = f"hbn{secrets.token_hex(3)}"
    server = start_server(
        data, tmp / "server.log", "--egress-bridge", bridge, "--egress-subnet", "10.254.0.0/24"
    )
    create: dict[str, list[float]] = {m: [] for m in MODES}
    delete: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        with httpx.Client(
            base_url=server.url, headers={"X-Api-Key": server.key}, timeout=60
        ) as http:
            for mode in MODES:
                body = {"name": f"bench-{mode}", "image": "local/busybox", "network": mode}
                http.post("/v2/sandboxes/templates", json=body).raise_for_status()
        with SandboxClient(api_endpoint=server.endpoint, api_key=server.key) as client:
            for i in range(args.warmup + args.n):
                for mode in MODES if i % 2 == 0 else reversed(MODES):
                    t0 = time.perf_counter()
                    sb = client.create_sandbox(f"bench-{mode}")
                    sb.run("true")
                    t1 = time.perf_counter()
                    client.delete_sandbox(sb.name)
                    t2 = time.perf_counter()
                    if i >= args.warmup:
                        create[mode].append(t1 - t0)
                        delete[mode].append(t2 - t1)
    finally:
        stop_server(server)
        remove_all_sandboxes(data)
        shutil.rmtree(tmp, ignore_errors=True)
        FORWARDING.write_text(forwarding)
    summary = {
        mode: {"create": Summary.of(create[mode]), "delete": Summary.of(delete[mode])}
        for mode in MODES
    }
    added = summary["egress"]["create"].p50 - summary["none"]["create"].p50
    added_delete = summary["egress"]["delete"].p50 - summary["none"]["delete"].p50
    if args.json:
        out = {m: {k: v.as_dict() for k, v in s.items()} for m, s in summary.items()}
        out["egress_adds_ms"] = {
            "create_p50": round(added, 3),
            "delete_p50": round(added_delete, 3),
        }
        print(json.dumps(out))
        return 0
    print(f"{args.n} rounds (+{args.warmup} warm-up), create = create_sandbox + run('true')")
    for mode in MODES:
        for what in ("create", "delete"):
            s = summary[mode][what]
            figures = f"p50 {s.p50:7.1f} ms  p99 {s.p99:7.1f} ms  mean {s.mean:7.1f} ms"
            print(f"  {mode:6} {what:6} {figures}")
    print(f"egress adds {added:.1f} ms to create (p50) and {added_delete:.1f} ms to delete (p50)")
    return 0


UPSTREAM = r"""
import socketserver, sys
ZEROS = bytes(1 << 20)
class H(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        mib = int(line.split()[1].strip(b"/") or 0)
        self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % (mib << 20))
        for _ in range(mib):
            self.wfile.write(ZEROS)
class S(socketserver.ThreadingTCPServer):
    daemon_threads = allow_reuse_address = True
s = S(("0.0.0.0", 80), H)
print("ready", flush=True)
s.serve_forever()
"""

CLIENT = r"""
import json, socket, sys, time
host, n, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def get(size):
    s = socket.create_connection((host, 80))
    s.sendall(b"GET /%d HTTP/1.1\r\nHost: upstream.bench\r\nConnection: close\r\n\r\n" % size)
    got = 0
    while chunk := s.recv(1 << 20):
        got += len(chunk)
    s.close()
    return got
lat = []
for _ in range(n):
    t0 = time.perf_counter()
    get(0)
    lat.append(time.perf_counter() - t0)
t0 = time.perf_counter()
got = get(mib)
print(json.dumps({"latency": lat, "seconds": time.perf_counter() - t0, "bytes": got}))
"""


def proxy_bench(n: int, mib: int, as_json: bool) -> int:
    """Connection latency and throughput through the egress proxy against direct NAT."""
    forwarding = FORWARDING.read_text()
    tmp = Path(tempfile.mkdtemp(prefix="hutch-bench-proxy-"))
    tag = secrets.token_hex(3)
    ns, host_if, peer_if, bridge = f"hbp-{tag}", f"hbh{tag}", f"hbu{tag}", f"hbp{tag}"
    upstream_ip = "198.51.100.80"
    hosts_line = f"{upstream_ip} {UPSTREAM_NAME}\n"

    def sh(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    data = tmp / "data"
    data.mkdir()
    subprocess.run(
        [str(REPO / "scripts/images.sh"), "python"],
        check=True,
        env={**os.environ, "HUTCH_CACHE_DIR": str(CACHE)},
    )
    import_image(data, "local/python", CACHE / "debian-python-3.11.tar")
    sh("ip", "netns", "add", ns)
    upstream = server = None
    latency: dict[str, Summary] = {}
    mib_per_s: dict[str, float] = {}
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        sh("ip", "link", "set", peer_if, "netns", ns)
        sh("ip", "addr", "add", "198.51.100.1/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{upstream_ip}/24", "dev", peer_if)
        sh("ip", "-n", ns, "link", "set", peer_if, "up")
        with HOSTS.open("a") as f:
            f.write(hosts_line)
        upstream = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", UPSTREAM],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert upstream.stdout is not None and upstream.stdout.readline() == "ready\n"
        server = start_server(
            data, tmp / "server.log", "--egress-bridge", bridge, "--egress-subnet", "10.254.1.0/24"
        )
        with httpx.Client(
            base_url=server.url, headers={"X-Api-Key": server.key}, timeout=600
        ) as http:
            body = {"name": "bench-proxy", "image": "local/python", "network": "egress"}
            http.post("/v2/sandboxes/templates", json=body).raise_for_status()
            header = {"name": "X-Bench", "type": "plaintext", "value": "1"}
            rule = {"name": "bench", "match_hosts": [UPSTREAM_NAME], "headers": [header]}
            policies = {
                "direct": None,
                "proxy": {"access_control": {"deny_list": ["denied.invalid"]}},
                "rules": {"rules": [rule]},
            }
            for label, proxy_config in policies.items():
                create: dict[str, object] = {"template_name": "bench-proxy", "name": label}
                if proxy_config is not None:
                    create["proxy_config"] = proxy_config
                sb = http.post("/v2/sandboxes/boxes", json=create)
                sb.raise_for_status()
                command = f"python3 -c {shlex.quote(CLIENT)} {upstream_ip} {n} {mib}"
                r = http.post(
                    f"/dp/{sb.json()['id']}/execute", json={"command": command, "timeout": 600}
                )
                r.raise_for_status()
                out = json.loads(r.json()["stdout"])
                assert out["bytes"] >= mib << 20, out
                latency[label] = Summary.of(out["latency"])
                mib_per_s[label] = mib / out["seconds"]
                http.delete(f"/v2/sandboxes/boxes/{label}")
    finally:
        HOSTS.write_text(HOSTS.read_text().replace(hosts_line, ""))
        if server is not None:
            stop_server(server)
            remove_all_sandboxes(data)
        if upstream is not None:
            upstream.kill()
            upstream.wait()
            if upstream.stdout is not None:
                upstream.stdout.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        FORWARDING.write_text(forwarding)
    if as_json:
        out = {k: {"latency": v.as_dict(), "mib_per_s": round(mib_per_s[k], 1)}
               for k, v in latency.items()}  # fmt: skip
        print(json.dumps(out))
        return 0
    print(f"{n} connections (connect + request + answer + close), then {mib} MiB over one")
    for label, lat in latency.items():
        print(
            f"  {label:6} latency p50 {lat.p50:6.2f} ms  p99 {lat.p99:6.2f} ms   "
            f"throughput {mib_per_s[label]:7.1f} MiB/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
