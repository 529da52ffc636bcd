"""Sandbox lifecycle latency: hutch end to end against a bare-runc floor on the same rootfs.

    .venv/bin/python bench/lifecycle.py [--n 50] [--warmup 3] [--json] [--trace-runc]

hutch: ``create_sandbox(wait_for_ready=True)`` + ``run("echo ok")`` (create-to-first-exec), then
``delete_sandbox``, through the sync SDK against a real ``hutch serve`` on loopback.

floor: the same busybox layer (the one the server's image store unpacked) under a fresh overlay,
a minimal runc bundle (runc-spec-like config, hutch's namespaces and cgroup limits, catatonit -P
as init bound in like hutch does), ``runc run -d`` + ``runc exec <id> /bin/echo ok``, then
``runc kill KILL`` + ``runc delete --force`` + umount. Mount and bundle preparation happen before
the clock starts and are reported on their own line.

Rounds alternate hutch / floor so drift on the machine hits both alike. Percentiles are
nearest-rank (p99 of fewer than 100 samples is the maximum).

``--trace-runc`` puts a bash wrapper in front of runc for the server only, logging each runc
call's wall time, and reports how much of each hutch phase is runc. The wrapper adds ~1 ms per
runc call to the hutch figures, so use it to see where time goes, not for the headline numbers.

Needs root. Everything is made under a temporary directory in /tmp, removed at the end. Exit
status: 0 when the target line says PASS, 1 when it says FAIL, 2 without root.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    Server,
    Summary,
    ensure_busybox,
    import_image,
    mount_overlay,
    mounts_under,
    remove_all_sandboxes,
    start_server,
    stop_server,
    umount,
)

from hutch import SandboxClient

IMAGE = "local/busybox"
TEMPLATE = "bench-bb"
CPU, CPU_MILLIS = "500m", 500
MEMORY, MEMORY_BYTES = "256Mi", 256 * 1024**2
PIDS_LIMIT = 1024  # hutch's default ServerConfig.pids_limit
CPU_PERIOD_US = 100_000
INIT = "/dev/.bench-init"
FLOOR_CGROUP_PARENT = "hutch-bench"
TARGET_P50_MS = 60.0
RUNC = shutil.which("runc") or "runc"
CATATONIT = shutil.which("catatonit") or "/usr/bin/catatonit"


# -- hutch -------------------------------------------------------------------------------------


@dataclass
class HutchRound:
    create: float
    first_exec: float
    delete: float
    #: (phase, wall-clock start, wall-clock end) for --trace-runc.
    windows: list[tuple[str, float, float]]


def hutch_round(client: SandboxClient) -> HutchRound:
    w0 = time.time()
    t0 = time.perf_counter()
    sb = client.create_sandbox(TEMPLATE, wait_for_ready=True)
    t1 = time.perf_counter()
    w1 = time.time()
    result = sb.run("echo ok")
    t2 = time.perf_counter()
    w2 = time.time()
    if result.stdout != "ok\n" or result.exit_code != 0:
        raise AssertionError(f"hutch run: {result!r}")
    client.delete_sandbox(sb.name)
    t3 = time.perf_counter()
    w3 = time.time()
    windows = [("create", w0, w1), ("first exec", w1, w2), ("delete", w2, w3)]
    return HutchRound(t1 - t0, t2 - t1, t3 - t2, windows)


# -- floor -------------------------------------------------------------------------------------


def floor_config(rootfs: Path, cgroup: str) -> dict[str, Any]:
    """A ``runc spec``-like config: hutch's namespaces and limits, catatonit -P as init."""
    caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": [INIT, "-P"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": "floor",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
            {
                "destination": INIT,
                "type": "bind",
                "source": CATATONIT,
                "options": ["bind", "ro", "nosuid", "nodev"],
            },
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "cgroupsPath": cgroup,
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "pids": {"limit": PIDS_LIMIT},
                "memory": {"limit": MEMORY_BYTES, "swap": MEMORY_BYTES},
                "cpu": {"quota": CPU_MILLIS * CPU_PERIOD_US // 1000, "period": CPU_PERIOD_US},
            },
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
            ],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }


@dataclass
class FloorRound:
    prep: float
    run: float
    exec: float
    delete: float


@dataclass
class Floor:
    root: Path  # runc --root plus one bundle directory per round
    layers: list[Path]
    ids: list[str] = field(default_factory=list)

    def runc(self, *args: str, capture: bool = False) -> subprocess.CompletedProcess[bytes]:
        # Like hutch: ``runc run -d`` hands its stdio to the container's init, so it gets
        # /dev/null (a pipe would never see EOF); ``runc exec`` output is captured.
        out = subprocess.PIPE if capture else subprocess.DEVNULL
        return subprocess.run(
            [RUNC, "--root", str(self.root / "runc"), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            check=False,
        )

    def round(self, index: int) -> FloorRound:
        cid = f"floor-{index}"
        bundle = self.root / cid
        t0 = time.perf_counter()
        for d in ("upper", "work", "rootfs"):
            (bundle / d).mkdir(parents=True)
        mount_overlay(self.layers, bundle / "upper", bundle / "work", bundle / "rootfs")
        cfg = floor_config(bundle / "rootfs", f"/{FLOOR_CGROUP_PARENT}/{cid}")
        (bundle / "config.json").write_text(json.dumps(cfg))
        t1 = time.perf_counter()
        self.ids.append(cid)
        log = bundle / "runc.log"
        run = self.runc(
            "--log", str(log), "--log-format", "text", "run", "-d", "--bundle", str(bundle), cid
        )
        t2 = time.perf_counter()
        if run.returncode != 0:
            raise RuntimeError(f"runc run {cid}: {log.read_text(errors='replace')}")
        ex = self.runc("exec", cid, "/bin/echo", "ok", capture=True)
        t3 = time.perf_counter()
        if ex.returncode != 0 or ex.stdout != b"ok\n":
            raise AssertionError(f"runc exec {cid}: rc={ex.returncode} {ex.stdout!r} {ex.stderr!r}")
        t4 = time.perf_counter()
        kill = self.runc("kill", cid, "KILL", capture=True)
        delete = self.runc("delete", "--force", cid, capture=True)
        umount(bundle / "rootfs")
        t5 = time.perf_counter()
        if kill.returncode != 0 or delete.returncode != 0:
            raise RuntimeError(f"runc kill/delete {cid}: {kill.stderr!r} {delete.stderr!r}")
        self.ids.remove(cid)
        shutil.rmtree(bundle)
        return FloorRound(t1 - t0, t2 - t1, t3 - t2, t5 - t4)

    def cleanup(self) -> None:
        state = self.root / "runc"
        listed = subprocess.run(
            [RUNC, "--root", str(state), "list", "-q"], capture_output=True, text=True, check=False
        ).stdout.split()
        for cid in {*listed, *self.ids}:
            self.runc("kill", cid, "KILL", capture=True)
            self.runc("delete", "--force", cid, capture=True)
        for point in mounts_under(self.root):
            umount(point)
        for controller in Path("/sys/fs/cgroup").iterdir():
            parent = controller / FLOOR_CGROUP_PARENT
            if parent.is_dir():
                for child in parent.iterdir():
                    if child.is_dir():
                        with contextlib.suppress(OSError):
                            child.rmdir()
                with contextlib.suppress(OSError):
                    parent.rmdir()


def store_layers(data_dir: Path) -> list[Path]:
    """The busybox image's unpacked layer directories in the server's image store."""
    layers = [p for p in (data_dir / "images/layers/sha256").iterdir() if p.is_dir()]
    if len(layers) != 1:
        raise RuntimeError(f"expected one unpacked busybox layer, found {layers}")
    return layers


# -- runc trace (opt-in) -----------------------------------------------------------------------

_TRACE_WRAPPER = """#!/bin/bash
t0=$EPOCHREALTIME
{runc} "$@"
rc=$?
printf '%s %s %s %s\\n' "$t0" "$EPOCHREALTIME" "$rc" "$*" >> {log}
exit $rc
"""
_SUBCOMMANDS = ("run", "exec", "kill", "delete", "list", "state")


@dataclass(frozen=True)
class RuncCall:
    start: float
    end: float
    subcommand: str


def install_trace_wrapper(bin_dir: Path, log: Path) -> None:
    bin_dir.mkdir()
    wrapper = bin_dir / "runc"
    wrapper.write_text(_TRACE_WRAPPER.format(runc=RUNC, log=log))
    wrapper.chmod(0o755)


def read_trace(log: Path) -> list[RuncCall]:
    calls = []
    if not log.exists():
        return []
    for line in log.read_text().splitlines():
        start, end, _rc, *args = line.split()
        sub = next((a for a in args if a in _SUBCOMMANDS), "?")
        calls.append(RuncCall(float(start), float(end), sub))
    return calls


def runc_time_in(calls: Sequence[RuncCall], start: float, end: float) -> tuple[float, int]:
    """Seconds spent in runc calls that started within [start, end], and how many."""
    inside = [c for c in calls if start <= c.start <= end]
    return sum(c.end - c.start for c in inside), len(inside)


# -- report ------------------------------------------------------------------------------------


def fmt_row(label: str, s: Summary) -> str:
    return f"{label:<48} {s.n:>4} {s.p50:>8.1f} {s.p99:>8.1f} {s.mean:>8.1f}"


def report(
    hutch: list[HutchRound],
    floor: list[FloorRound],
    trace: list[RuncCall] | None,
    as_json: bool,
) -> bool:
    h_total = Summary.of([r.create + r.first_exec for r in hutch])
    h_create = Summary.of([r.create for r in hutch])
    h_exec = Summary.of([r.first_exec for r in hutch])
    h_delete = Summary.of([r.delete for r in hutch])
    f_total = Summary.of([r.run + r.exec for r in floor])
    f_run = Summary.of([r.run for r in floor])
    f_exec = Summary.of([r.exec for r in floor])
    f_prep = Summary.of([r.prep for r in floor])
    f_delete = Summary.of([r.delete for r in floor])
    rows = [
        ("hutch create-to-first-exec", "hutch_create_to_first_exec", h_total),
        ("  create_sandbox(wait_for_ready=True)", "hutch_create", h_create),
        ('  first run("echo ok")', "hutch_first_exec", h_exec),
        ("hutch delete", "hutch_delete", h_delete),
        ("runc floor run+exec", "floor_run_exec", f_total),
        ("  runc run -d", "floor_run", f_run),
        ("  runc exec /bin/echo ok", "floor_exec", f_exec),
        ("  (untimed prep: mkdir+overlay+config.json)", "floor_prep", f_prep),
        ("runc floor delete (kill+delete --force+umount)", "floor_delete", f_delete),
    ]
    print(f"{'phase':<48} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for label, _, s in rows:
        print(fmt_row(label, s))
    ratios = {
        "create_to_first_exec_p50": h_total.p50 / f_total.p50,
        "create_to_first_exec_p99": h_total.p99 / f_total.p99,
        "delete_p50": h_delete.p50 / f_delete.p50,
        "delete_p99": h_delete.p99 / f_delete.p99,
    }
    print()
    print("hutch / floor")
    print(
        f"  create-to-first-exec  p50 {ratios['create_to_first_exec_p50']:.2f}x"
        f"   p99 {ratios['create_to_first_exec_p99']:.2f}x"
    )
    print(
        f"  delete                p50 {ratios['delete_p50']:.2f}x   p99 {ratios['delete_p99']:.2f}x"
    )
    print("percentiles: nearest-rank (p99 of n<100 is the max)")

    traced: dict[str, Any] = {}
    if trace is not None:
        print()
        print("server-side runc time per hutch phase (--trace-runc; wrapper adds ~1 ms/call)")
        print(f"{'phase':<14} {'calls':>5} {'phase p50':>10} {'runc p50':>9} {'rest p50':>9}")
        for phase in ("create", "first exec", "delete"):
            spans = [w for r in hutch for w in r.windows if w[0] == phase]
            runc_s, counts, rest_s = [], [], []
            for _, start, end in spans:
                spent, count = runc_time_in(trace, start, end)
                runc_s.append(spent)
                counts.append(count)
                rest_s.append(end - start - spent)
            whole = Summary.of([end - start for _, start, end in spans])
            in_runc, rest = Summary.of(runc_s), Summary.of(rest_s)
            calls = sorted(counts)[len(counts) // 2] if counts else 0
            print(f"{phase:<14} {calls:>5} {whole.p50:>10.1f} {in_runc.p50:>9.1f} {rest.p50:>9.1f}")
            traced[phase] = {
                "runc_calls": calls,
                "phase": whole.as_dict(),
                "runc": in_runc.as_dict(),
                "rest": rest.as_dict(),
            }
        by_sub: dict[str, list[float]] = {}
        for c in trace:
            by_sub.setdefault(c.subcommand, []).append(c.end - c.start)
        print(
            "runc calls: "
            + ", ".join(
                f"{sub} n={len(v)} p50={Summary.of(v).p50:.1f} ms"
                for sub, v in sorted(by_sub.items())
            )
        )
        traced["subcommands"] = {sub: Summary.of(v).as_dict() for sub, v in by_sub.items()}

    ok = h_total.p50 <= TARGET_P50_MS
    print()
    print(f"target: create-to-first-exec p50 <= {TARGET_P50_MS:.0f} ms: {'PASS' if ok else 'FAIL'}")
    if as_json:
        doc: dict[str, Any] = {
            "percentile_method": "nearest-rank",
            "rows": {key: s.as_dict() for _, key, s in rows},
            "ratios_hutch_over_floor": {k: round(v, 3) for k, v in ratios.items()},
            "target": {
                "metric": "hutch_create_to_first_exec.p50_ms",
                "limit_ms": TARGET_P50_MS,
                "value_ms": round(h_total.p50, 3),
                "pass": ok,
            },
        }
        if trace is not None:
            doc["runc_trace"] = traced
        print(json.dumps(doc, indent=2))
    return ok


# -- main --------------------------------------------------------------------------------------


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="hutch-bench-", dir="/tmp"))
    try:
        yield tmp
    finally:
        for point in mounts_under(tmp):
            with contextlib.suppress(OSError):
                umount(point)
        shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50, help="measured rounds of each (default 50)")
    ap.add_argument("--warmup", type=int, default=3, help="uncounted rounds first (default 3)")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    ap.add_argument(
        "--trace-runc",
        action="store_true",
        help="log the server's runc calls and show how much of each phase they take",
    )
    args = ap.parse_args(argv)
    if args.n < 1 or args.warmup < 0:
        ap.error("--n must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/lifecycle.py needs root (runc, overlay mounts, cgroups)", file=sys.stderr)
        return 2
    # Turn SIGTERM into SystemExit so the cleanup below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tar = ensure_busybox()
    with workspace() as tmp:
        data = tmp / "data"
        data.mkdir()
        floor = Floor(tmp / "floor", [])
        server: Server | None = None
        trace_log = tmp / "runc-trace.log"
        try:
            import_image(data, IMAGE, tar)
            env: dict[str, str] = {}
            if args.trace_runc:
                install_trace_wrapper(tmp / "bin", trace_log)
                env["PATH"] = f"{tmp / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}"
            server = start_server(data, tmp / "server.log", env=env)
            floor.layers = store_layers(data)
            (floor.root / "runc").mkdir(parents=True)
            hutch_rounds: list[HutchRound] = []
            floor_rounds: list[FloorRound] = []
            with SandboxClient(api_endpoint=server.endpoint, api_key=server.key) as client:
                client.create_template(TEMPLATE, IMAGE, cpu=CPU, memory=MEMORY)
                for i in range(args.warmup + args.n):
                    h = hutch_round(client)
                    f = floor.round(i)
                    if i >= args.warmup:
                        hutch_rounds.append(h)
                        floor_rounds.append(f)
            trace = read_trace(trace_log) if args.trace_runc else None
            ok = report(hutch_rounds, floor_rounds, trace, args.json)
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
            floor.cleanup()


if __name__ == "__main__":
    sys.exit(main())
