"""Helpers shared by the benchmarks: a real ``hutch serve`` on loopback, statistics, mounts.

Benchmarks never import from ``tests/``; the few lines they need from its fixtures are here.
Everything needs root (runc, overlay mounts, cgroups).
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("HUTCH_CACHE_DIR", "/var/cache/hutch"))
API_KEY = "bench-key-0123456789"
HUTCH = [sys.executable, "-m", "hutch"]

_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


# -- images and server -------------------------------------------------------------------------


def ensure_busybox() -> Path:
    """Build (once, cached) the busybox root-filesystem tarball; return its path."""
    subprocess.run(
        [str(REPO / "scripts/images.sh"), "busybox"],
        check=True,
        env={**os.environ, "HUTCH_CACHE_DIR": str(CACHE)},
    )
    return CACHE / "busybox.tar"


def import_image(data_dir: Path, name: str, tar: Path) -> None:
    subprocess.run(
        [*HUTCH, "image", "import", name, str(tar), "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@dataclass
class Server:
    url: str
    key: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def endpoint(self) -> str:
        """The control-plane URL the SDK takes as ``api_endpoint``."""
        return f"{self.url}/v2/sandboxes"

    def alive(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def start_server(
    data_dir: Path, log: Path, *extra: str, env: dict[str, str] | None = None
) -> Server:
    """Start ``hutch serve`` on a free loopback port and wait until it answers /healthz."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*HUTCH, "serve", "--port", str(port), "--data-dir", str(data_dir), *extra],
            env={**os.environ, "HUTCH_API_KEY": API_KEY, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", API_KEY, data_dir, proc, log)
    if not wait_until(lambda: server.alive() or proc.poll() is not None, 30):
        stop_server(server)
        raise RuntimeError(f"hutch serve did not start; log:\n{log.read_text()}")
    if proc.poll() is not None:
        raise RuntimeError(f"hutch serve exited; log:\n{log.read_text()}")
    return server


def stop_server(server: Server) -> None:
    if server.proc.poll() is not None:
        return
    server.proc.terminate()
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


def remove_all_sandboxes(data_dir: Path) -> None:
    """Delete every container a server left (servers keep sandboxes across restarts)."""
    from hutch.runtime.runc import RuncRuntime

    async def _clean() -> None:
        rt = RuncRuntime(data_dir)
        for sandbox_id in await rt.list_ids():
            await rt.delete(sandbox_id)
        await rt.aclose()

    asyncio.run(_clean())


# -- mounts ------------------------------------------------------------------------------------


def mount_overlay(lower: Sequence[Path], upper: Path, work: Path, target: Path) -> None:
    data = f"lowerdir={':'.join(map(str, lower))},upperdir={upper},workdir={work}"
    if _libc.mount(b"overlay", str(target).encode(), b"overlay", 0, data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount overlay on {target}: {os.strerror(err)}")


def umount(target: Path) -> None:
    """Lazily unmount ``target``; not being a mount point (any more) is fine."""
    if _libc.umount2(str(target).encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


def mounts_under(prefix: Path) -> list[Path]:
    """Mount points at or below ``prefix``, deepest first (the order to unmount them in)."""
    found: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == str(prefix) or point.startswith(f"{prefix}/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


# -- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``p`` % of values <= it.

    With fewer than 100 samples p99 is the maximum.
    """
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    """Milliseconds."""

    n: int
    p50: float
    p99: float
    mean: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Summary:
        ms = [s * 1000 for s in seconds]
        mean = sum(ms) / len(ms) if ms else math.nan
        return cls(len(ms), percentile(ms, 50), percentile(ms, 99), mean)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "p50_ms": round(self.p50, 3),
            "p99_ms": round(self.p99, 3),
            "mean_ms": round(self.mean, 3),
        }
