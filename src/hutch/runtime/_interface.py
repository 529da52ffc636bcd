"""The runtime seam: what the server needs from a container runtime, nothing about HTTP.

One real implementation exists (``hutch.runtime.runc``); a second (Kubernetes, microVM) must pass
the same conformance tests.
"""

from __future__ import annotations

import abc
import asyncio
import posixpath
import socket
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hutch.runtime._search import FileMatch, GlobPattern, Limits, LineMatch, SearchResult
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


# -- files: what a runtime provides so the server can read and write a sandbox's files --------
#
# Paths are the sandbox's own: absolute, lexically normalised (:func:`normalize_path`), and
# resolved by the runtime *inside* the sandbox (its symlinks and ``..`` as the sandbox sees
# them, clamped at its root), never against the host's filesystem. Nothing here names a host fd
# or a host path, so a runtime whose sandboxes live elsewhere (a pod, a microVM) can provide it.
# Failures are the :class:`FileError` subclasses below (their ``str()`` is for users), or
# :class:`SandboxNotFound` when the sandbox is not running.


class FileError(RuntimeError_):
    """A path inside a sandbox could not be used; the subclass says why."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class FileNotFound(FileError):
    """Nothing exists at the path (or a component of it is not a directory)."""


class NotAFile(FileError):
    """The path is a directory or a special file where a regular file is needed."""


class NotADirectory(FileError):
    """The path is not a directory where one is needed (a search root)."""


class InvalidPath(FileError):
    """The path is malformed, or resolving it needs a link that cannot be followed inside the
    sandbox (e.g. a ``/proc/*/root`` magic link that would leave it)."""


class FileIOError(FileError):
    """The file system refused the operation (full disk, quota, permissions, I/O error)."""


#: Longest path a client may name, in UTF-8 bytes (Linux's PATH_MAX).
MAX_PATH_BYTES = 4096
#: Largest chunk :meth:`FileReader.read` yields.
READ_CHUNK_BYTES = 1 << 20


def normalize_path(path: str, home: str) -> str:
    """Absolute, lexically normalised form of a client path (relative paths start at ``home``).

    Raises:
        InvalidPath: NUL bytes, empty, or longer than :data:`MAX_PATH_BYTES`.
    """
    if "\x00" in path:
        raise InvalidPath(path, "Path must not contain NUL bytes")
    if not path or not path.strip():
        raise InvalidPath(path, "Path must not be empty")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise InvalidPath(path, f"Path is longer than {MAX_PATH_BYTES} bytes")
    if not path.startswith("/"):
        path = posixpath.join(home, path)
    return posixpath.normpath(path).replace("//", "/")


@dataclass(frozen=True)
class FileStat:
    """One version of a regular file, as :meth:`Runtime.open_file` found it."""

    size: int
    mtime_ns: int
    #: Opaque; equal for two stats only if they describe the same file with the same contents
    #: as far as the runtime can tell (identity, size, mtime). The server's ETag is made from it.
    version: str


class FileReader(abc.ABC):
    """An open regular file of a sandbox; :attr:`stat` and every byte read describe the same
    file, even if its path is renamed over meanwhile."""

    stat: FileStat

    @abc.abstractmethod
    def read(self, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Bytes from ``offset``: ``length`` of them (None: to the end), in chunks of at most
        :data:`READ_CHUNK_BYTES`. Fewer if the file shrank meanwhile (never padded)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the file; idempotent."""


class SandboxFiles(abc.ABC):
    """The file operations of :class:`Runtime` (all of them abstract)."""

    @abc.abstractmethod
    async def exists(self, sandbox_id: str, path: str) -> bool:
        """Whether ``path`` exists in the sandbox, following its symlinks inside it.

        Raises:
            SandboxNotFound: The sandbox is not running.
        """

    @abc.abstractmethod
    async def open_file(self, sandbox_id: str, path: str) -> FileReader:
        """Open the regular file ``path`` for reading (the caller closes the reader).

        Raises:
            SandboxNotFound: The sandbox is not running.
            FileNotFound, NotAFile, InvalidPath, FileIOError: See :class:`FileError`.
        """

    @abc.abstractmethod
    async def write_file(self, sandbox_id: str, path: str, chunks: AsyncIterable[bytes]) -> int:
        """Write ``chunks`` to the file ``path``; returns its size.

        Streamed, never held in memory: the bytes go first to an unnamed file in the sandbox's
        own storage (under its disk quota, out of its reach); only once ``chunks`` is exhausted
        is ``path`` created (with missing parent directories) or truncated and filled. So if
        ``chunks`` raises (its exception propagates unchanged) or the bytes do not fit, the
        sandbox's files are unchanged. New files and directories belong to the sandbox's root
        user; an existing file keeps its mode.

        Raises:
            SandboxNotFound: The sandbox is not running.
            NotAFile: ``path`` is a directory or a special file.
            InvalidPath, FileIOError: See :class:`FileError` (a full disk is FileIOError).
        """

    @abc.abstractmethod
    async def glob(
        self, sandbox_id: str, path: str, pattern: GlobPattern, limits: Limits
    ) -> SearchResult[FileMatch]:
        """Entries below the directory ``path`` whose path relative to it matches ``pattern``,
        breadth first, names sorted per directory, ``path`` joined back onto each match.

        Symlinks are entries, never followed; kernel-interface filesystems (``/proc``,
        ``/sys``…) below ``path`` are not entered. Bounded by ``limits``: hitting any bound
        ends the search with ``truncated`` set, so a partial answer is never taken as whole.

        Raises:
            SandboxNotFound: The sandbox is not running.
            FileNotFound, NotADirectory, InvalidPath, FileIOError: ``path`` cannot be searched.
        """

    @abc.abstractmethod
    async def grep(
        self,
        sandbox_id: str,
        path: str,
        needle: str,
        limits: Limits,
        *,
        path_pattern: GlobPattern | None = None,
        name_pattern: str | None = None,
    ) -> SearchResult[LineMatch]:
        """Lines containing the literal ``needle`` in regular files below the directory
        ``path``, walked as :meth:`glob` walks (and bounded the same way).

        Files are chosen by ``path_pattern`` (path relative to ``path``) or ``name_pattern``
        (a one-segment glob on the base name, :func:`~hutch.runtime._search.basename_matcher`);
        neither: every file. Binary files (a NUL in the first 8 KiB), symlinks, special files
        and files on kernel-interface filesystems are skipped. Lines are 1-based; text is UTF-8
        with invalid bytes replaced, cut at ``limits.max_line_chars``.

        Raises:
            As :meth:`glob`.
        """


# -- end of files ---------------------------------------------------------------------------


class Runtime(SandboxFiles, abc.ABC):
    """A container runtime; its file operations are :class:`SandboxFiles`'s."""

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

    async def aclose(self) -> None:
        """Release runtime-wide resources (not the sandboxes)."""
