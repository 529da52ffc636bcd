"""Server configuration (CLI flags and environment)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hutch.runtime._backend import RuntimeConfig, runtime_config
from hutch.runtime._interface import NetworkMode
from hutch.runtime.images import RegistryConfig


def default_data_dir() -> Path:
    env = os.environ.get("HUTCH_DATA_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/hutch")
    return Path.home() / ".local/share/hutch"


#: A DNS name (labels of letters, digits and hyphens) for ``--service-domain``.
SERVICE_DOMAIN = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)


@dataclass
class ServerConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8080
    #: Absolute base URL clients reach this server at; default: taken from each request.
    public_url: str | None = None
    database_url: str | None = None
    #: Port of the listener serving service URLs (``/svc``), an origin apart from the API and the
    #: web UI; None: services are served on the API's port (only for tests of the relay).
    service_port: int | None = None
    #: Absolute base URL clients reach the service listener at (behind a proxy); default: the
    #: request's scheme and host with ``service_port``.
    service_public_url: str | None = None
    #: With it, every service gets an origin of its own, host ``<sandbox id>-<port>.<domain>``
    #: (wildcard DNS to the service listener, e.g. ``*.localhost`` locally), so services of
    #: different sandboxes cannot read one another in a browser; without it they share the
    #: service listener's origin, apart by path.
    service_domain: str | None = None
    #: Largest accepted upload, bytes.
    max_upload_bytes: int = 512 * 1024**2
    #: Largest request body of every other route (control-plane JSON), bytes; see _limits.
    max_body_bytes: int = 1024**2
    #: Most bytes of command output kept in memory for all command sessions together; past
    #: it the oldest finished sessions are forgotten first.
    session_log_budget: int = 256 * 1024**2
    #: Per stream, bytes of command output kept by blocking ``/execute``.
    max_exec_output_bytes: int = 64 * 1024**2
    #: Processes per sandbox (fork bombs stop here).
    pids_limit: int = 1024
    #: The runtime backend and its own settings (``hutch serve --runtime`` and its flags).
    runtime: RuntimeConfig = field(default_factory=runtime_config)
    #: Disk limit of a sandbox whose template names no ``storage``.
    default_storage_bytes: int = 10 * 1024**3
    #: Default quotas of a workspace (None: unlimited); ``hutch workspaces quota`` overrides.
    quota_sandboxes: int | None = None
    quota_cpu_millis: int | None = None
    quota_memory_bytes: int | None = None
    #: Upper bound on ``timeout`` for a blocking create.
    max_create_timeout: int = 3600
    #: Pulling images: default registry, registries.conf (mirrors), credentials.
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    #: Image of sandboxes created without a template or snapshot (spec §9.1); None refuses them.
    default_image: str | None = None
    #: Seconds of idleness before a template-less sandbox is stopped, when its create names
    #: none (0: never; spec §9.1 says the hosted service uses 600).
    default_idle_ttl: int = 600
    #: Seconds after a stop before a template-less sandbox is deleted, when its create names none
    #: (0: never).
    default_delete_after_stop: int = 0
    #: Lifetimes of template-less sandboxes must be multiples of this many seconds (§9.1 SDKs
    #: validate multiples of 60 client-side; 1 turns the check off, for tests at seconds scale).
    ttl_granularity: int = 60
    #: Longest a ``POST /snapshots`` waits for the build to finish before answering ``building``
    #: (clients poll either way; answering ``ready`` saves them a poll interval).
    snapshot_wait_seconds: float = 5.0
    #: Network mode of templates created without one (``none``: loopback only).
    default_network: NetworkMode = "none"
    #: ``proxy_config`` (``access_control`` only) of sandboxes whose create and template name
    #: none (``hutch serve --default-proxy-config``); None: unrestricted.
    default_proxy_config: dict[str, Any] | None = None
    #: ``GET /metrics`` without an API key (for a scraper on a private network); by default
    #: it needs an admin key.
    metrics_public: bool = False
