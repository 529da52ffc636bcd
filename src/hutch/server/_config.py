"""Server configuration (CLI flags and environment)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hutch.runtime._interface import NetworkMode
from hutch.runtime.runc._network import EgressConfig


def default_data_dir() -> Path:
    env = os.environ.get("HUTCH_DATA_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/hutch")
    return Path.home() / ".local/share/hutch"


@dataclass
class ServerConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8080
    #: Absolute base URL clients reach this server at; default: taken from each request.
    public_url: str | None = None
    database_url: str | None = None
    #: Largest accepted upload, bytes.
    max_upload_bytes: int = 512 * 1024**2
    #: Per stream, bytes of command output kept by blocking ``/execute``.
    max_exec_output_bytes: int = 64 * 1024**2
    #: Processes per sandbox (fork bombs stop here).
    pids_limit: int = 1024
    #: Upper bound on ``timeout`` for a blocking create.
    max_create_timeout: int = 3600
    #: Network mode of templates created without one (``none``: loopback only).
    default_network: NetworkMode = "none"
    #: How ``egress`` sandboxes are networked: bridge, subnet, DNS, allowed host ports.
    egress: EgressConfig = field(default_factory=EgressConfig)
