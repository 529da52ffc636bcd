"""What egress networking adds to a sandbox's create-to-first-exec and delete.

    .venv/bin/python bench/network.py [--n 20] [--warmup 2] [--json]

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
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import (
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="rounds (one sandbox of each mode)")
    parser.add_argument("--warmup", type=int, default=2, help="rounds not counted")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/network.py needs root (runc, network namespaces, iptables)", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
