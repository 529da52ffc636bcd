"""TCP tunnel throughput and latency: hutch's tunnel against a direct loopback floor.

    .venv/bin/python bench/tunnel.py [--mib 256] [--rtt 2000] [--json]

One busybox sandbox runs four services on its own loopback, each ``nc -ll -p PORT -e PROG``:
a source of N bytes (and one of N/8 bytes), a sink that answers the byte count it read
(``wc -c``), and an echo (``cat``). Each measurement runs twice on the same service:

* **tunnel**: through ``sb.tunnel(port)`` of the sync SDK against a real ``hutch serve`` on
  loopback (local socket → yamux over WebSocket → server → socket in the sandbox);
* **floor**: a direct TCP connection to the same service over the sandbox's loopback, made
  from the host with a socket created in the sandbox's network namespace. What the service and
  the kernel can do, with no tunnel in between.

Figures: download (sandbox → client) and upload (client → sandbox) of N MiB on one stream and
split over eight concurrent streams (MB/s, 10^6 bytes per second, of payload), and the round
trip of one byte through the echo (p50/p99 over ``--rtt`` exchanges). Percentiles are
nearest-rank. The target of issue 4 is ≥ 100 MB/s on one stream, both directions.

Needs root. Everything lives under a temporary directory in /tmp, removed at the end. Exit
status: 0 when the target line says PASS, 1 when it says FAIL, 2 without root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    Summary,
    ensure_busybox,
    import_image,
    remove_all_sandboxes,
    start_server,
    stop_server,
    wait_until,
)

from hutch import Sandbox, SandboxClient
from hutch.runtime._netns import connect_in_netns

IMAGE = "local/busybox"
CHUNK = 1 << 20
TARGET_MB_S = 100.0
SOURCE, SOURCE_8, SINK, ECHO = 7101, 7102, 7103, 7104

Connect = Callable[[int], socket.socket]


def start_services(sb: Sandbox, total: int) -> None:
    # Each connection's program first says "ready", so a transfer starts only once busybox nc
    # has accepted it: nc listens with a tiny backlog, and eight connections arriving together
    # would otherwise hit SYN cookies and resets in the sandbox's kernel.
    services = {
        SOURCE: f"head -c {total} /dev/zero",
        SOURCE_8: f"head -c {total // 8} /dev/zero",
        SINK: "wc -c",
    }
    for port, prog in services.items():
        sb.run(f"nc -ll -p {port} -e sh -c 'echo ready; exec {prog}' </dev/null >/dev/null 2>&1 &")
    sb.run(f"nc -ll -p {ECHO} -e cat </dev/null >/dev/null 2>&1 &")

    def listening() -> bool:
        out = sb.run("netstat -ltn").stdout
        return all(f":{port} " in out for port in (*services, ECHO))

    if not wait_until(listening, 10):
        raise RuntimeError("the services did not start listening in the sandbox")


def open_ready(connect: Connect, port: int) -> socket.socket:
    """A connection to ``port`` whose program has started (it sent ``ready``)."""
    s = connect(port)
    s.settimeout(60)
    line = b""
    while not line.endswith(b"\n"):
        byte = s.recv(1)
        if not byte:
            s.close()
            raise RuntimeError(f"the service on {port} closed before it was ready")
        line += byte
    if line != b"ready\n":
        s.close()
        raise RuntimeError(f"the service on {port} said {line!r}, not ready")
    return s


def download(s: socket.socket, expect: int) -> None:
    with s:
        got = 0
        while chunk := s.recv(CHUNK):
            got += len(chunk)
    if got != expect:
        raise RuntimeError(f"download: got {got} bytes, expected {expect}")


def upload(s: socket.socket, size: int) -> None:
    payload = bytes(CHUNK)
    with s:
        left = size
        while left:
            n = min(left, CHUNK)
            s.sendall(payload[:n])
            left -= n
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    if int(reply.strip() or b"-1") != size:
        raise RuntimeError(f"upload: the sink counted {reply!r}, expected {size}")


def timed_parallel(jobs: list[Callable[[], None]]) -> float:
    """Seconds for all ``jobs`` run at once, each in its own thread; re-raises the first error."""
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def round_trips(connect: Connect, n: int) -> Summary:
    samples: list[float] = []
    with connect(ECHO) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n + 20):
            start = time.perf_counter()
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise RuntimeError("echo lost a byte")
            samples.append(time.perf_counter() - start)
    return Summary.of(samples[20:])  # the first few warm up the path


def transfer_rate(
    connect: Connect, port: int, streams: int, job: Callable[[socket.socket, int], None], size: int
) -> float:
    """MB/s of ``streams`` concurrent transfers of ``size`` bytes each (set-up not timed)."""
    socks = [open_ready(connect, port) for _ in range(streams)]
    return streams * size / 1e6 / timed_parallel([lambda s=s: job(s, size) for s in socks])


def measure(connect: Connect, total: int, rtt_n: int) -> dict[str, Any]:
    per = total // 8
    result: dict[str, Any] = {
        "download_1": transfer_rate(connect, SOURCE, 1, download, total),
        "download_8": transfer_rate(connect, SOURCE_8, 8, download, per),
        "upload_1": transfer_rate(connect, SINK, 1, upload, total),
        "upload_8": transfer_rate(connect, SINK, 8, upload, per),
    }
    result["rtt"] = round_trips(connect, rtt_n).as_dict()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB per transfer (default 256)")
    parser.add_argument("--rtt", type=int, default=2000, help="1-byte round trips (default 2000)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/tunnel.py needs root (runc, mounts, cgroups)", file=sys.stderr)
        return 2
    total = args.mib * 1024 * 1024

    tmp = Path(tempfile.mkdtemp(prefix="hutch-bench-tunnel-"))
    data = tmp / "data"
    data.mkdir()
    server = None
    try:
        import_image(data, IMAGE, ensure_busybox())
        server = start_server(data, tmp / "server.log")
        with SandboxClient(api_endpoint=server.endpoint, api_key=server.key) as client:
            client.create_template("bench", IMAGE, cpu="2", memory="512Mi")
            with client.sandbox("bench") as sb:
                start_services(sb, total)
                assert sb.id is not None
                init_pid = int((data / "sandboxes" / sb.id / "init.pid").read_text())

                def floor(port: int) -> socket.socket:
                    return connect_in_netns(init_pid, "127.0.0.1", port, timeout=10)

                results = {"floor": measure(floor, total, args.rtt)}
                with (
                    sb.tunnel(SOURCE) as t1,
                    sb.tunnel(SOURCE_8) as t8,
                    sb.tunnel(SINK) as ts,
                    sb.tunnel(ECHO) as te,
                ):
                    local = {SOURCE: t1, SOURCE_8: t8, SINK: ts, ECHO: te}

                    def tunnel(port: int) -> socket.socket:
                        return socket.create_connection(("127.0.0.1", local[port].local_port))

                    results["tunnel"] = measure(tunnel, total, args.rtt)
            client.delete_template("bench")
    finally:
        if server is not None:
            stop_server(server)
        remove_all_sandboxes(data)
        shutil.rmtree(tmp, ignore_errors=True)

    ok = results["tunnel"]["download_1"] >= TARGET_MB_S and results["tunnel"]["upload_1"] >= (
        TARGET_MB_S
    )
    if args.json:
        print(json.dumps({"mib": args.mib, "results": results, "pass": ok}, indent=2))
    else:
        print(f"TCP tunnel, {args.mib} MiB per transfer, MB/s of payload (10^6 B/s)")
        print(f"{'':22}{'tunnel':>12}{'floor':>12}")
        for key, label in (
            ("download_1", "download, 1 stream"),
            ("download_8", "download, 8 streams"),
            ("upload_1", "upload, 1 stream"),
            ("upload_8", "upload, 8 streams"),
        ):
            print(f"{label:22}{results['tunnel'][key]:12.1f}{results['floor'][key]:12.1f}")
        for key in ("p50_ms", "p99_ms"):
            label = f"1-byte round trip {key[:3]}"
            print(
                f"{label:22}{results['tunnel']['rtt'][key]:10.3f}ms"
                f"{results['floor']['rtt'][key]:10.3f}ms"
            )
        verdict = "PASS" if ok else "FAIL"
        print(f"target: >= {TARGET_MB_S:.0f} MB/s on one stream, both directions: {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
