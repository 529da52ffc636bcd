"""Command execution: hutch's round trip and stdout throughput against a bare ``runc exec`` floor.

    .venv/bin/python bench/exec.py [--n 500] [--warmup 20] [--mib 256] [--reps 3] [--json]

One busybox sandbox (``--cpu``, default 2 CPUs) of a real ``hutch serve`` on loopback, one warm
sync SDK client. Round trips, ``--n`` of each, the kinds interleaved round by round so that drift
on the machine hits all alike:

* **ws**: ``sb.run("true")`` over ``/execute/ws``: upgrade, ``execute``, ``started``, ``exit``,
  close (the SDK's default shell, ``/bin/bash``, falls back to busybox ``/bin/sh`` here);
* **http**: ``POST <dataplane_url>/execute`` ``{"command": "true"}`` on a keep-alive httpx client
  (the blocking path the SDK falls back to);
* **floor**: ``runc --root <data>/runc exec <sandbox id> /bin/true`` of the same container, and
  ``… /bin/sh -c true`` (what hutch runs) beside it.

Throughput, ``--reps`` times each, the median reported: ``--mib`` MiB of ``a`` as the stdout of
``head -c N /dev/zero | tr '\\0' a``:

* **hutch**: ``sb.run(cmd, wait=False)``; the handle is iterated to the end and the bytes of
  ``chunk.data`` counted (timed from the call to the last chunk); the server's and this
  process's CPU time during the transfer are shown beside it;
* **floor**: the same command under bare ``runc exec`` with stdout a pipe that this process
  reads to the end and discards.

MB/s are 10^6 bytes per second. Percentiles are nearest-rank. Targets of issue 3: ws round trip
p50 ≤ 15 ms, throughput ≥ 100 MB/s.

Needs root. Everything lives under a temporary directory in /tmp, removed at the end. Exit
status: 0 when both target lines say PASS, 1 when one says FAIL, 2 without root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from _common import (
    Server,
    Summary,
    ensure_busybox,
    import_image,
    remove_all_sandboxes,
    start_server,
    stop_server,
)

from hutch import Sandbox, SandboxClient

IMAGE = "local/busybox"
TEMPLATE = "bench-exec"
MEMORY = "512Mi"
TARGET_P50_MS = 15.0
TARGET_MB_S = 100.0
RUNC = shutil.which("runc") or "runc"
READ_SIZE = 1 << 20
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def stream_command(size: int) -> str:
    return f"head -c {size} /dev/zero | tr '\\0' a"


# -- round trips -------------------------------------------------------------------------------


def ws_round_trip(sb: Sandbox) -> float:
    t0 = time.perf_counter()
    result = sb.run("true")
    elapsed = time.perf_counter() - t0
    if result.exit_code != 0 or result.stdout or result.stderr:
        raise AssertionError(f"ws run('true'): {result!r}")
    return elapsed


def http_round_trip(http: httpx.Client, url: str) -> float:
    t0 = time.perf_counter()
    response = http.post(url, json={"command": "true", "timeout": 60, "shell": "/bin/bash"})
    elapsed = time.perf_counter() - t0
    body = response.json()
    if response.status_code != 200 or body.get("exit_code") != 0:
        raise AssertionError(f"POST /execute: {response.status_code} {body!r}")
    return elapsed


@dataclass
class Runc:
    """Bare ``runc`` against the server's state directory."""

    root: Path
    sandbox_id: str

    def argv(self, *process: str) -> list[str]:
        return [RUNC, "--root", str(self.root), "exec", self.sandbox_id, *process]

    def round_trip(self, *process: str) -> float:
        t0 = time.perf_counter()
        done = subprocess.run(
            self.argv(*process),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        elapsed = time.perf_counter() - t0
        if done.returncode != 0 or done.stdout or done.stderr:
            raise AssertionError(f"runc exec {process}: {done!r}")
        return elapsed

    def stream(self, size: int) -> float:
        """Seconds to read ``size`` bytes of the command's stdout through a pipe."""
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            self.argv("/bin/sh", "-c", stream_command(size)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        got = 0
        with proc.stdout:
            fd = proc.stdout.fileno()
            while chunk := os.read(fd, READ_SIZE):
                got += len(chunk)
        code = proc.wait()
        elapsed = time.perf_counter() - t0
        if code != 0 or got != size:
            raise AssertionError(f"runc exec stream: exit {code}, {got} of {size} bytes")
        return elapsed


# -- throughput --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


@dataclass(frozen=True)
class Transfer:
    seconds: float
    server_cpu: float = 0.0
    client_cpu: float = 0.0


def hutch_stream(sb: Sandbox, size: int, server_pid: int) -> Transfer:
    s0, c0 = cpu_seconds(server_pid), time.process_time()
    t0 = time.perf_counter()
    handle = sb.run(stream_command(size), timeout=0, wait=False)
    got = 0
    for chunk in handle:
        got += len(chunk.data)  # the stream is ASCII: characters are bytes
    elapsed = time.perf_counter() - t0
    server_cpu, client_cpu = cpu_seconds(server_pid) - s0, time.process_time() - c0
    result = handle.result
    if result.exit_code != 0 or got != size or handle.last_stdout_offset != size:
        raise AssertionError(f"hutch stream: exit {result.exit_code}, {got} of {size} bytes")
    return Transfer(elapsed, server_cpu, client_cpu)


def median_transfer(runs: Sequence[Transfer]) -> Transfer:
    ordered = sorted(runs, key=lambda t: t.seconds)
    return ordered[(len(ordered) - 1) // 2]


# -- report ------------------------------------------------------------------------------------


def fmt_row(label: str, s: Summary) -> str:
    return f"{label:<48} {s.n:>4} {s.p50:>8.2f} {s.p99:>8.2f} {s.mean:>8.2f}"


def report(
    trips: dict[str, list[float]],
    hutch: list[Transfer],
    floor: list[Transfer],
    size: int,
    as_json: bool,
) -> bool:
    labels = {
        "ws": 'hutch sb.run("true") over /execute/ws',
        "http": "hutch POST /execute (keep-alive httpx)",
        "floor_true": "floor runc exec <id> /bin/true",
        "floor_sh": "floor runc exec <id> /bin/sh -c true",
    }
    summaries = {key: Summary.of(trips[key]) for key in labels}
    print(f"{'round trip':<48} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for key, label in labels.items():
        print(fmt_row(label, summaries[key]))
    ws, base = summaries["ws"], summaries["floor_true"]
    print(f"ws / floor(/bin/true)   p50 {ws.p50 / base.p50:.2f}x   p99 {ws.p99 / base.p99:.2f}x")

    h, f = median_transfer(hutch), median_transfer(floor)
    h_rate, f_rate = size / 1e6 / h.seconds, size / 1e6 / f.seconds
    all_h = ", ".join(f"{size / 1e6 / t.seconds:.1f}" for t in hutch)
    all_f = ", ".join(f"{size / 1e6 / t.seconds:.1f}" for t in floor)
    print()
    print(f"stdout throughput, {size >> 20} MiB, median of {len(hutch)} (MB/s = 10^6 B/s)")
    print(f"{'':<48} {'MB/s':>8} {'seconds':>8}   runs (MB/s)")
    for label, t, rate, runs in (
        ("hutch SDK, iterating a wait=False handle", h, h_rate, all_h),
        ("floor runc exec, stdout piped to this process", f, f_rate, all_f),
    ):
        print(f"{label:<48} {rate:>8.1f} {t.seconds:>8.2f}   {runs}")
    print(
        f"hutch / floor {h_rate / f_rate:.2f}x; CPU during the median hutch run: "
        f"server {h.server_cpu:.2f} s, SDK client {h.client_cpu:.2f} s"
    )
    print("percentiles: nearest-rank")

    rt_ok = ws.p50 <= TARGET_P50_MS
    tp_ok = h_rate >= TARGET_MB_S
    print()
    print(f"target: ws round trip p50 <= {TARGET_P50_MS:.0f} ms: {'PASS' if rt_ok else 'FAIL'}")
    print(f"target: stdout throughput >= {TARGET_MB_S:.0f} MB/s: {'PASS' if tp_ok else 'FAIL'}")
    if as_json:
        doc: dict[str, Any] = {
            "percentile_method": "nearest-rank",
            "round_trip": {key: summaries[key].as_dict() for key in labels},
            "throughput": {
                "bytes": size,
                "hutch_mb_s": round(h_rate, 1),
                "floor_mb_s": round(f_rate, 1),
                "hutch_runs_mb_s": [round(size / 1e6 / t.seconds, 1) for t in hutch],
                "floor_runs_mb_s": [round(size / 1e6 / t.seconds, 1) for t in floor],
                "hutch_server_cpu_s": round(h.server_cpu, 3),
                "hutch_client_cpu_s": round(h.client_cpu, 3),
            },
            "targets": {
                "ws_round_trip_p50_ms": {"limit": TARGET_P50_MS, "value": round(ws.p50, 3)},
                "throughput_mb_s": {"limit": TARGET_MB_S, "value": round(h_rate, 1)},
                "pass": rt_ok and tp_ok,
            },
        }
        print(json.dumps(doc, indent=2))
    return rt_ok and tp_ok


# -- main --------------------------------------------------------------------------------------


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="hutch-bench-exec-", dir="/tmp"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500, help="round trips of each kind (default 500)")
    ap.add_argument("--warmup", type=int, default=20, help="uncounted rounds first (default 20)")
    ap.add_argument("--mib", type=int, default=256, help="MiB of stdout to stream (default 256)")
    ap.add_argument("--reps", type=int, default=3, help="streams of each side (default 3)")
    ap.add_argument("--cpu", default="2", help="the sandbox's CPU limit (default 2)")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args(argv)
    if args.n < 1 or args.warmup < 0 or args.mib < 1 or args.reps < 1:
        ap.error("--n, --mib and --reps must be >= 1 and --warmup >= 0")
    return args


def interleaved(rounds: int, kinds: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {key: [] for key in kinds}
    for _ in range(rounds):
        for key, measure in kinds.items():
            samples[key].append(measure())
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/exec.py needs root (runc, overlay mounts, cgroups)", file=sys.stderr)
        return 2
    # Turn SIGTERM into SystemExit so the cleanup below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tar = ensure_busybox()
    size = args.mib * 1024 * 1024
    with workspace() as tmp:
        data = tmp / "data"
        data.mkdir()
        server: Server | None = None
        try:
            import_image(data, IMAGE, tar)
            server = start_server(data, tmp / "server.log")
            with (
                SandboxClient(api_endpoint=server.endpoint, api_key=server.key) as client,
                httpx.Client(headers={"X-Api-Key": server.key}, timeout=60) as http,
            ):
                client.create_template(TEMPLATE, IMAGE, cpu=args.cpu, memory=MEMORY)
                with client.sandbox(TEMPLATE) as sb:
                    assert sb.id is not None and sb.dataplane_url is not None
                    runc = Runc(data / "runc", sb.id)
                    execute_url = f"{sb.dataplane_url}/execute"
                    kinds: dict[str, Callable[[], float]] = {
                        "ws": lambda: ws_round_trip(sb),
                        "http": lambda: http_round_trip(http, execute_url),
                        "floor_true": lambda: runc.round_trip("/bin/true"),
                        "floor_sh": lambda: runc.round_trip("/bin/sh", "-c", "true"),
                    }
                    interleaved(args.warmup, kinds)
                    trips = interleaved(args.n, kinds)
                    hutch_runs: list[Transfer] = []
                    floor_runs: list[Transfer] = []
                    hutch_stream(sb, 16 << 20, server.proc.pid)  # warm-up
                    for _ in range(args.reps):
                        hutch_runs.append(hutch_stream(sb, size, server.proc.pid))
                        floor_runs.append(Transfer(runc.stream(size)))
            ok = report(trips, hutch_runs, floor_runs, size, args.json)
            return 0 if ok else 1
        except BaseException:
            if server is not None and server.log.exists():
                tail = server.log.read_text(errors="replace").splitlines()[-40:]
                print("--- hutch serve log (tail) ---", *tail, sep="\n", file=sys.stderr)
            raise
        finally:
            if server is not None:
                stop_server(server)
            with contextlib.suppress(Exception):
                remove_all_sandboxes(data)


if __name__ == "__main__":
    sys.exit(main())
