"""A throwaway PostgreSQL cluster for tests: Debian's server binaries, ``initdb`` into a temp
dir, listening on a free loopback port (trust auth) with its unix socket in that dir too.

As root the cluster runs as the ``postgres`` user (the server refuses root); otherwise as the
current user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from itertools import count
from pathlib import Path

INITDB = ["--no-sync", "-E", "UTF8", "--locale=C.UTF-8"]


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(
            f"no /usr/lib/postgresql/*/bin/{name}: install Debian's postgresql (make system-deps)"
        )
    return found[-1]


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    root: Path
    port: int
    _names = count()

    def createdb(self) -> str:
        """A fresh empty database; returns its ``postgresql+asyncpg://`` URL."""
        name = f"hutch_{next(self._names)}"
        subprocess.run(
            [_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(
            _as_owner([_bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster() -> Cluster:
    root = Path(tempfile.mkdtemp(prefix="hutch-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", _free_port()
    subprocess.run(
        _as_owner([_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", *INITDB]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    # fsync off: a test cluster needs no durability, and the disk is shared.
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    options += " -c synchronous_commit=off -c full_page_writes=off"
    proc = subprocess.run(
        _as_owner(
            [_bin("pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start"]
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {proc.stdout}{proc.stderr}{log}")
    return Cluster(root, port)
