"""Snapshots: capture time, and create-to-first-exec from a snapshot beside the image path.

One ``hutch serve`` on loopback with the busybox image as its default image. A source sandbox gets
64 MiB of data plus 1,000 small files, then:

* **capture**: ``POST /boxes/{name}/snapshot`` of that sandbox, ``--n`` times (each a new
  snapshot; copy-on-write, so its cost should not depend on the data);
* **create-to-first-exec**, interleaved round by round (in a shuffled order) so the three paths
  see the same machine:
  ``POST /boxes`` from the image (the baseline), from a snapshot built from the same image, and
  from the captured snapshot (its 64 MiB included), each followed by ``POST /execute echo ok``.
  Deletes are not timed.

Prints p50/p99 of each and the ratio of each snapshot path to the image path (target: <= 1).
Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
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


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ok(r: httpx.Response) -> dict[str, Any]:
    if r.status_code >= 300:
        raise RuntimeError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
    return r.json() if r.content else {}


def create_and_exec(http: httpx.Client, body: dict[str, Any]) -> tuple[float, float, str]:
    """Seconds to the created sandbox and to its first command's answer; its name."""
    t0 = time.perf_counter()
    box = ok(http.post(f"{API}/boxes", json=body))
    created = time.perf_counter() - t0
    out = ok(http.post(f"/dp/{box['id']}/execute", json={"command": "echo ok"}))
    elapsed = time.perf_counter() - t0
    if out["stdout"] != "ok\n":
        raise RuntimeError(f"unexpected output {out!r}")
    return created, elapsed, box["name"]


def fmt(label: str, s: Summary) -> str:
    return f"{label:<34} p50 {s.p50:8.2f} ms   p99 {s.p99:8.2f} ms   (n={s.n})"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=30, help="measured rounds of each (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="uncounted rounds first (default 3)")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/snapshots.py needs root (runc, overlay mounts, cgroups)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tar = ensure_busybox()
    tmp = Path(tempfile.mkdtemp(prefix="hutch-bench-snap-", dir="/tmp"))
    data = tmp / "data"
    data.mkdir()
    server = None
    try:
        import_image(data, IMAGE, tar)
        server = start_server(data, tmp / "server.log", "--default-image", IMAGE)
        headers = {"X-Api-Key": server.key}
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
            src = ok(http.post(f"{API}/boxes", json={"name": "bench-src"}))
            fill = (
                "mkdir -p /data/small && dd if=/dev/urandom of=/data/big bs=1M count=64 "
                "2>/dev/null && for i in $(seq 1000); do echo $i > /data/small/$i; done"
            )
            ok(http.post(f"/dp/{src['id']}/execute", json={"command": fill, "timeout": 300}))
            built = ok(
                http.post(
                    f"{API}/snapshots",
                    json={"name": "bench-img", "docker_image": IMAGE, "fs_capacity_bytes": 1 << 30},
                )
            )
            if built["status"] != "ready":
                raise RuntimeError(f"snapshot build not ready: {built}")
            captures: list[float] = []
            for i in range(args.warmup + args.n):
                t = timed(
                    lambda: ok(
                        http.post(f"{API}/boxes/bench-src/snapshot", json={"name": "bench-cap"})
                    )
                )
                if i >= args.warmup:
                    captures.append(t)
            captured = ok(http.get(f"{API}/snapshots/bench-cap:latest"))
            paths = {
                "from image (baseline)": {},
                "from snapshot of the image": {"snapshot_id": built["id"]},
                "from captured snapshot (64 MiB)": {"snapshot_id": captured["id"]},
            }
            times: dict[str, list[float]] = {k: [] for k in paths}
            creates: dict[str, list[float]] = {k: [] for k in paths}
            rng = random.Random(1)
            for i in range(args.warmup + args.n):
                order = list(paths.items())
                rng.shuffle(order)  # no path always follows another's delete or refill
                for label, body in order:
                    created, elapsed, name = create_and_exec(http, body)
                    ok(http.delete(f"{API}/boxes/{name}"))
                    if i >= args.warmup:
                        times[label].append(elapsed)
                        creates[label].append(created)
        cap = Summary.of(captures)
        summaries = {k: Summary.of(v) for k, v in times.items()}
        base = summaries["from image (baseline)"]
        print(fmt("capture (64 MiB + 1000 files)", cap))
        print("create + first exec:")
        for label, s in summaries.items():
            ratio = f"   {s.p50 / base.p50:.2f}x image" if label != "from image (baseline)" else ""
            print(fmt("  " + label, s) + ratio)
        print("of which the create alone:")
        create_summaries = {k: Summary.of(v) for k, v in creates.items()}
        create_base = create_summaries["from image (baseline)"]
        for label, s in create_summaries.items():
            ratio = (
                f"   {s.p50 / create_base.p50:.2f}x image"
                if label != "from image (baseline)"
                else ""
            )
            print(fmt("  " + label, s) + ratio)
        if args.json:
            print(
                json.dumps(
                    {"capture": cap.as_dict(), **{k: s.as_dict() for k, s in summaries.items()}}
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
