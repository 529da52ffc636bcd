"""The runtime seam: what the server needs from a container runtime, nothing about HTTP.

One real implementation exists (``hutch.runtime.runc``); a second (Kubernetes, microVM) must pass
the same conformance tests.
"""

from __future__ import annotations

import abc
import asyncio
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hutch.runtime.images._types import Image


class RuntimeError_(Exception):
    """Base of runtime failures; ``str()`` is meant for users."""


class SandboxNotFound(RuntimeError_):
    pass


class SpawnError(RuntimeError_):
    """A process could not be started inside a sandbox."""


class ResourceExhausted(SpawnError):
    """The sandbox is at one of its limits (processes): nothing more starts until it frees some.

    The sandbox itself is fine; its caller's mistake, not the server's (a client error).
    """


#: ``none``: loopback only. ``egress``: an address on a host bridge, out through NAT; no route to
#: other sandboxes or to the host's own services.
NetworkMode = Literal["none", "egress"]
NETWORK_MODES: tuple[NetworkMode, ...] = ("none", "egress")


@dataclass(frozen=True)
class SandboxSpec:
    """What a sandbox is made of. ``id`` is the runtime's key (stable across renames)."""

    id: str
    hostname: str
    image: Image
    cpu_millis: int | None = None
    memory_bytes: int | None = None
    #: Limit of the sandbox's writable layer; None: the runtime's default.
    storage_bytes: int | None = None
    pids_limit: int = 1024
    env: Mapping[str, str] = field(default_factory=dict)
    network: NetworkMode = "none"
    #: A captured snapshot (:meth:`Runtime.capture`) whose files the new sandbox starts with, as a
    #: copy-on-write clone; None: the image's files only. Used by :meth:`Runtime.create` only.
    snapshot: str | None = None


@dataclass(frozen=True)
class ExecSpec:
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = "/"
    pty: bool = False
    #: Initial terminal size when ``pty`` is set.
    rows: int = 24
    cols: int = 80
    #: Who the command runs as inside the sandbox: ``name``, ``uid``, ``name:group`` or
    #: ``uid:gid``, resolved against the sandbox's own ``/etc/passwd`` and ``/etc/group``;
    #: None: root (uid 0, gid 0).
    user: str | None = None
    #: Keep the command across a server restart (pipes only; a runtime may not support it, then
    #: it is an ordinary command): its output and exit status are kept outside the server, and
    #: :meth:`Runtime.kept_commands` of a later server returns it with this text (opaque here).
    keep: str | None = None


@dataclass
class KeptCommand:
    """A command an earlier server started with :attr:`ExecSpec.keep`, taken over by this one.

    ``process`` continues each stream right after ``history`` (per stream: the offset its bytes
    start at, and the most recent output, up to the size asked for); its ``close`` forgets the
    command for good.
    """

    keep: str
    process: Process
    history: dict[str, tuple[int, bytes]]


class Process(abc.ABC):
    """A process running inside a sandbox (and every process it starts)."""

    pid: int
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader | None  # None when a PTY merges both into stdout
    stdin: asyncio.StreamWriter | None

    @abc.abstractmethod
    async def wait(self) -> int:
        """Exit code once the process has exited and been reaped (128+N for signal N)."""

    @abc.abstractmethod
    async def kill(self) -> None:
        """Kill the whole process tree, including children that called ``setsid``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release resources held for this process (after it exited)."""

    def resize(self, rows: int, cols: int) -> None:  # noqa: B027 - optional hook
        """Change the terminal size of a PTY process (no-op for pipes)."""


class Runtime(abc.ABC):
    @abc.abstractmethod
    async def create(self, spec: SandboxSpec) -> None:
        """Create and start the sandbox; on failure nothing of it is left behind."""

    @abc.abstractmethod
    async def delete(self, sandbox_id: str) -> None:
        """Stop and remove everything of the sandbox; idempotent."""

    @abc.abstractmethod
    async def stop(self, sandbox_id: str) -> None:
        """Stop the sandbox: every process in it is killed and its CPU and memory are freed, but
        its filesystem is kept for :meth:`start`. Idempotent.

        Raises:
            SandboxNotFound: The runtime holds no such sandbox.
        """

    @abc.abstractmethod
    async def start(self, spec: SandboxSpec) -> None:
        """Start a stopped sandbox again from the same ``spec``, its files as they were at the
        stop. A no-op when it is running; on failure it is left stopped.

        Raises:
            SandboxNotFound: The runtime holds no such sandbox (its filesystem is gone).
        """

    @abc.abstractmethod
    async def discard_writes(
        self, sandbox_id: str, *, snapshot: str | None, storage_bytes: int | None
    ) -> None:
        """Throw away everything a stopped sandbox wrote: its files become those it was created
        with (captured snapshot ``snapshot``'s, when the runtime still holds it, over the
        image), with a disk limit of ``storage_bytes`` (None: the runtime's default). Atomic:
        after a crash the sandbox has its old files or the fresh ones.

        Raises:
            SandboxNotFound: The runtime holds no such sandbox.
            RuntimeError_: It is running, or the reset failed (its files are unchanged).
        """

    @abc.abstractmethod
    async def snapshot_ids(self) -> set[str]:
        """Ids of the captured snapshots whose files this runtime holds."""

    @abc.abstractmethod
    async def capture(self, sandbox_id: str, snapshot_id: str) -> None:
        """Keep the sandbox's files as they are now (its writable layer over the image; not
        tmpfs mounts, not processes) under ``snapshot_id``, for :attr:`SandboxSpec.snapshot`.

        Immutable once made; running or stopped sandboxes alike.

        Raises:
            SandboxNotFound: The runtime holds no such sandbox.
            RuntimeError_: The files could not be captured.
        """

    @abc.abstractmethod
    async def snapshot_usage(self, snapshot_id: str) -> int:
        """Bytes of disk a captured snapshot's own files take (not the image's)."""

    @abc.abstractmethod
    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Remove a captured snapshot; idempotent. Sandboxes created from it are not affected."""

    @abc.abstractmethod
    async def list_ids(self) -> set[str]:
        """Ids of all sandboxes this runtime holds."""

    @abc.abstractmethod
    async def is_running(self, sandbox_id: str) -> bool: ...

    @abc.abstractmethod
    async def exec(self, sandbox_id: str, spec: ExecSpec) -> Process: ...

    async def kept_commands(self, sandbox_id: str, history: int) -> list[KeptCommand]:
        """Commands earlier servers started with ``keep`` in this sandbox, each with up to
        ``history`` bytes of recent output (both streams together); called once per sandbox."""
        return []

    def file_owner(self, sandbox_id: str) -> tuple[int, int]:
        """Host uid and gid that the sandbox's root owns files as (files the server creates
        for it get these)."""
        return 0, 0

    @abc.abstractmethod
    def root_fd(self, sandbox_id: str) -> int:
        """An ``O_PATH`` fd of the sandbox's root as the sandbox sees it (caller closes it)."""

    @abc.abstractmethod
    async def connect(self, sandbox_id: str, port: int) -> socket.socket:
        """A TCP socket connected to ``127.0.0.1:port`` *inside* the sandbox's network.

        The host's own loopback is never reachable this way. The socket is non-blocking; the
        caller closes it.

        Raises:
            SandboxNotFound: The sandbox is not running.
            ConnectionRefusedError: Nothing listens on that port inside the sandbox.
            TimeoutError: The connection was not established in time.
            OSError: Any other failure to connect.
        """

    async def set_egress_policy(
        self, sandbox_id: str, access_control: Mapping[str, Any] | None
    ) -> None:
        """Set the sandbox's egress access control (``proxy_config.access_control``, already
        validated; None or empty: unrestricted). Kept across stop and start; a running sandbox
        gets it for new connections. May be called before :meth:`create` (it then applies from
        the start). A runtime without egress control refuses any policy.
        """
        if access_control:
            raise RuntimeError_("this runtime has no egress access control")

    def egress_denied(self, sandbox_id: str) -> int:
        """Egress connections (and packets) of the sandbox refused by its access control."""
        return 0

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release runtime-wide resources (not the sandboxes)."""
