"""Density: 1,000 idle busybox sandboxes on one host, their memory, and create latency under load.

One ``hutch serve`` on loopback with the busybox image as its default image. Then:

* **create at 0 alive**: ``--probe`` creates (``POST /boxes``), each deleted at once, on an empty
  server (the baseline);
* **fill**: ``--n`` sandboxes created one after the other and kept (idle: only their init runs);
* **exec**: ``POST /execute echo ok`` in every ``n / --sample``-th of them;
* **create at n alive**: ``--probe`` creates, each deleted at once, so ``n`` stay alive;
* then every sandbox is deleted (timed, not a figure of merit).

Host memory per sandbox is reported three ways, each over the ``n`` kept sandboxes:
``MemAvailable`` (``/proc/meminfo``) before the fill minus after it, which counts everything the
host spent (kernel objects, page cache, the server's growth), but also whatever else runs on the
host meanwhile; the sum of the sandboxes' memory cgroups (``memory.usage_in_bytes`` on cgroup v1,
``memory.current`` on v2: their processes and the kernel memory charged to them); and the server's
RSS growth. The target is <= 3 MiB per sandbox. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    Summary,
    ensure_busybox,
    import_image,
    remove_all_sandboxes,
    start_server,
    stop_server,
)

API = "/api/v2/sandboxes"
IMAGE = "local/busybox"
MiB = 1 << 20
CGROUP = Path("/sys/fs/cgroup")


def ok(r: httpx.Response) -> dict[str, Any]:
    if r.status_code >= 300:
        raise RuntimeError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
    return r.json() if r.content else {}


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cgroup_memory(sandbox_id: str) -> int:
    """Bytes charged to the sandbox's memory cgroup (v1 or v2); 0 if it has none."""
    for path in (
        CGROUP / "memory" / "hutch" / sandbox_id / "memory.usage_in_bytes",
        CGROUP / "hutch" / sandbox_id / "memory.current",
    ):
        if path.exists():
            return int(path.read_text())
    return 0


def probe(http: httpx.Client, n: int) -> list[float]:
    """``n`` timed creates, each deleted (untimed) before the next."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        box = ok(http.post(f"{API}/boxes", json={}))
        times.append(time.perf_counter() - t0)
        ok(http.delete(f"{API}/boxes/{box['name']}"))
    return times


def fmt(label: str, s: Summary) -> str:
    return f"{label:<30} p50 {s.p50:8.2f} ms   p99 {s.p99:8.2f} ms   (n={s.n})"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="sandboxes kept alive (default 1000)")
    ap.add_argument("--probe", type=int, default=30, help="timed creates at 0 and at n alive")
    ap.add_argument("--sample", type=int, default=50, help="sandboxes that run a command")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/density.py needs root (runc, overlay mounts, cgroups)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tar = ensure_busybox()
    tmp = Path(tempfile.mkdtemp(prefix="hutch-bench-density-", dir="/tmp"))
    data = tmp / "data"
    data.mkdir()
    server = None
    try:
        import_image(data, IMAGE, tar)
        server = start_server(data, tmp / "server.log", "--default-image", IMAGE)
        headers = {"X-Api-Key": server.key}
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
            probe(http, 3)  # warm-up: image layers in the page cache, first-use paths
            at_zero = Summary.of(probe(http, args.probe))
            avail0, rss0 = mem_available(), rss(server.proc.pid)
            boxes: list[dict[str, Any]] = []
            t0 = time.perf_counter()
            for i in range(args.n):
                try:
                    boxes.append(ok(http.post(f"{API}/boxes", json={})))
                except RuntimeError as exc:
                    raise RuntimeError(f"create #{i + 1} with {i} alive failed: {exc}") from None
            fill_s = time.perf_counter() - t0
            avail1, rss1 = mem_available(), rss(server.proc.pid)
            charged = sum(cgroup_memory(b["id"]) for b in boxes)
            execs = []
            step = max(1, args.n // max(1, args.sample))
            for box in boxes[::step]:
                t = time.perf_counter()
                out = ok(http.post(f"/dp/{box['id']}/execute", json={"command": "echo ok"}))
                execs.append(time.perf_counter() - t)
                if out["stdout"] != "ok\n":
                    raise RuntimeError(f"unexpected output {out!r}")
            at_n = Summary.of(probe(http, args.probe))
            t0 = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda b: ok(http.delete(f"{API}/boxes/{b['name']}")), boxes))
            delete_s = time.perf_counter() - t0
        n = len(boxes)
        per_host = (avail0 - avail1) / n / MiB
        per_cgroup = charged / n / MiB
        per_rss = (rss1 - rss0) / n / MiB
        exec_s = Summary.of(execs)
        print(f"{n} idle busybox sandboxes alive at once (filled in {fill_s:.1f} s)")
        print("host memory per sandbox:")
        print(f"  MemAvailable drop             {per_host:8.2f} MiB   (target <= 3 MiB)")
        print(f"  sandbox memory cgroups        {per_cgroup:8.2f} MiB")
        print(f"  server RSS growth             {per_rss:8.2f} MiB")
        print("create (POST /boxes):")
        print(fmt("  at 0 alive", at_zero))
        print(fmt(f"  at {n} alive", at_n) + f"   {at_n.p50 / at_zero.p50:.2f}x at 0 (p50)")
        print(fmt(f"exec in 1 of {step} (echo ok)", exec_s))
        print(f"delete all {n}: {delete_s:.1f} s ({delete_s / n * 1000:.1f} ms each, 4 at a time)")
        if args.json:
            print(
                json.dumps(
                    {
                        "alive": n,
                        "mem_available_mib_per_sandbox": round(per_host, 3),
                        "cgroup_mib_per_sandbox": round(per_cgroup, 3),
                        "server_rss_mib_per_sandbox": round(per_rss, 3),
                        "create_at_0": at_zero.as_dict(),
                        "create_at_n": at_n.as_dict(),
                        "exec": exec_s.as_dict(),
                        "delete_all_s": round(delete_s, 3),
                    }
                )
            )
        return 0
    finally:
        if server is not None:
            stop_server(server)
        try:
            remove_all_sandboxes(data)
        except Exception as exc:  # best effort; say so
            print(f"cleanup: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
