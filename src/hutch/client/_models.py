"""Plain data the SDK returns (spec §7).

Every ``from_dict`` reads each field with its documented default, so a missing field never fails,
and a JSON ``null`` where an object or list belongs counts as absent.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass
class ExecutionResult:
    """Outcome of a finished command."""

    stdout: str
    stderr: str
    exit_code: int

    @property
    def success(self) -> bool:
        """True when the command exited with code 0."""
        return self.exit_code == 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExecutionResult:
        """Build from an ``/execute`` answer; missing fields give ``""``, ``""``, ``-1``."""
        return cls(
            stdout=data.get("stdout", ""),
            stderr=data.get("stderr", ""),
            exit_code=data.get("exit_code", -1),
        )


@dataclass
class OutputChunk:
    """One piece of streamed output.

    Attributes:
        stream: ``"stdout"`` or ``"stderr"``.
        data: The text (valid UTF-8).
        offset: Byte offset of ``data`` within its stream.
    """

    stream: str
    data: str
    offset: int = 0


@dataclass
class ResourceSpec:
    """CPU, memory and storage limits of a template."""

    cpu: str = "500m"
    memory: str = "512Mi"
    storage: str | None = None


@dataclass
class VolumeMountSpec:
    """A volume mounted into a template's sandboxes."""

    volume_name: str
    mount_path: str


@dataclass
class SandboxTemplate:
    """A template: image, limits and volume mounts that sandboxes are created from."""

    name: str
    image: str
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    volume_mounts: list[VolumeMountSpec] = field(default_factory=list)
    id: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    #: hutch's network mode (``"none"`` or ``"egress"``); None from servers without one.
    network: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SandboxTemplate:
        """Build from a template object of the API."""
        resources = _mapping(data.get("resources"))
        mounts = data.get("volume_mounts")
        return cls(
            name=data.get("name", ""),
            image=data.get("image", "unknown"),
            resources=ResourceSpec(
                cpu=resources.get("cpu", "500m"),
                memory=resources.get("memory", "512Mi"),
                storage=resources.get("storage"),
            ),
            volume_mounts=[
                VolumeMountSpec(
                    volume_name=_mapping(mount).get("volume_name", ""),
                    mount_path=_mapping(mount).get("mount_path", ""),
                )
                for mount in (mounts if isinstance(mounts, list) else [])
            ],
            id=data.get("id"),
            created_at=data.get("created_at"),
            updated_at=data.get("updated_at"),
            network=data.get("network"),
        )


@dataclass
class ResourceStatus:
    """Lightweight provisioning status of a sandbox."""

    status: str
    status_message: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResourceStatus:
        """Build from ``GET /boxes/{name}/status``; a missing status reads as provisioning."""
        return cls(
            status=data.get("status", "provisioning"),
            status_message=data.get("status_message"),
        )


@dataclass
class RunConfig:
    """The user, working directory and environment commands run with (``docker run -u/-w/-e``).

    Layers: the image's, then the snapshot's, the sandbox's and one command's; ``user`` and
    ``work_dir`` replace the layer below, ``env_vars`` merge into it key by key.

    Attributes:
        user: ``name``, ``uid``, ``name:group`` or ``uid:gid``; None: the layer below's.
        work_dir: Absolute working directory; None: the layer below's.
        env_vars: Variables merged over the layer below's.
    """

    user: str | None = None
    work_dir: str | None = None
    env_vars: dict[str, str] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build from a ``run_config`` object of the API; missing fields are None."""
        env_vars = data.get("env_vars")
        return cls(
            user=data.get("user"),
            work_dir=data.get("work_dir"),
            env_vars=dict(env_vars) if isinstance(env_vars, Mapping) and env_vars else None,
        )

    def to_payload(self) -> dict[str, Any]:
        """The request fragment: unset fields are left out, so the layer below's apply."""
        payload: dict[str, Any] = {}
        if self.user is not None:
            payload["user"] = self.user
        if self.work_dir is not None:
            payload["work_dir"] = self.work_dir
        if self.env_vars is not None:
            payload["env_vars"] = dict(self.env_vars)
        return payload


def run_config_payload(value: RunConfig | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A ``run_config`` argument (model or plain mapping) as a request fragment."""
    if value is None:
        return None
    if isinstance(value, RunConfig):
        return value.to_payload()
    return dict(value)


def run_config_from(value: Any) -> RunConfig | None:
    """A ``run_config`` response field; absent or null (servers before run_config) is None."""
    return RunConfig.from_dict(value) if isinstance(value, Mapping) else None


@dataclass
class Snapshot:
    """An immutable root filesystem sandboxes boot from, built from an image or captured from a
    sandbox.

    Attributes:
        id: Its unique id.
        name: Its name (tags are published under it).
        status: ``"building"``, ``"ready"`` or ``"failed"``.
        fs_capacity_bytes: Disk limit of sandboxes booted from it.
        docker_image: The image it was built from (builds only).
        image_digest: That image's digest once resolved.
        source_sandbox_id: The sandbox it was captured from (captures only).
        status_message: Why it failed, or build progress.
        fs_used_bytes: Bytes its files use.
        created_by: Who created it.
        registry_id: The private registry the image came from, if any.
        created_at: Creation time (ISO 8601).
        updated_at: Last update time (ISO 8601).
        tags: Tags of its name that point at it (empty: reachable by id only).
        run_config: What sandboxes booted from it run with; None from older servers.
    """

    id: str
    name: str
    status: str
    fs_capacity_bytes: int
    docker_image: str | None = None
    image_digest: str | None = None
    source_sandbox_id: str | None = None
    status_message: str | None = None
    fs_used_bytes: int | None = None
    created_by: str | None = None
    registry_id: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    tags: list[str] = field(default_factory=list)
    run_config: RunConfig | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        """Build from a snapshot object of the API; a missing status reads as building."""
        tags = data.get("tags")
        return cls(
            id=data.get("id", ""),
            name=data.get("name", ""),
            status=data.get("status", "building"),
            fs_capacity_bytes=data.get("fs_capacity_bytes") or 0,
            docker_image=data.get("docker_image"),
            image_digest=data.get("image_digest"),
            source_sandbox_id=data.get("source_sandbox_id"),
            status_message=data.get("status_message"),
            fs_used_bytes=data.get("fs_used_bytes"),
            created_by=data.get("created_by"),
            registry_id=data.get("registry_id"),
            created_at=data.get("created_at"),
            updated_at=data.get("updated_at"),
            tags=[t for t in tags if isinstance(t, str)] if isinstance(tags, list) else [],
            run_config=run_config_from(data.get("run_config")),
        )


@dataclass
class SnapshotTag:
    """One tag published under a snapshot name, and the snapshot it points at."""

    tag: str
    snapshot_id: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SnapshotTag:
        """Build from an item of ``GET /snapshots-by-name/{name}``."""
        return cls(tag=data.get("tag", ""), snapshot_id=data.get("snapshot_id", ""))


# -- files (the 0.13+ SDKs' file helpers) -----------------------------------------------------


@dataclass
class FileInfo:
    """One entry found by :meth:`~hutch.AsyncSandbox.glob` or :meth:`~hutch.AsyncSandbox.ls`.

    Attributes:
        path: Absolute path of the entry inside the sandbox.
        is_dir: True for a directory.
        size_bytes: Its size (as ``lstat`` reports it: a symlink's own size).
        modified_at: Modification time (RFC 3339), if the server sent one.
    """

    path: str
    is_dir: bool = False
    size_bytes: int = 0
    modified_at: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileInfo:
        """Build from an item of a ``/glob`` answer."""
        return cls(
            path=data.get("path", ""),
            is_dir=bool(data.get("is_dir", False)),
            size_bytes=data.get("size_bytes") or 0,
            modified_at=data.get("modified_at"),
        )


@dataclass
class GrepMatch:
    """One line holding the searched text.

    Attributes:
        path: Absolute path of the file.
        line: Line number, from 1.
        text: The line (without its newline; very long lines are cut by the server).
    """

    path: str
    line: int
    text: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GrepMatch:
        """Build from an item of a ``/grep`` answer."""
        return cls(path=data.get("path", ""), line=data.get("line") or 0, text=data.get("text", ""))


def _items_of(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    matches = data.get("matches")
    return [m for m in matches if isinstance(m, Mapping)] if isinstance(matches, list) else []


@dataclass
class _Matches(Generic[T]):
    """What a search found; iterable and sized like the list of matches."""

    matches: list[T] = field(default_factory=list)
    truncated: bool = False

    def __iter__(self) -> Iterator[T]:
        return iter(self.matches)

    def __len__(self) -> int:
        return len(self.matches)


@dataclass
class GlobResult(_Matches[FileInfo]):
    """Entries matching a glob.

    Attributes:
        matches: The entries, in the order the server found them.
        truncated: The server stopped at a bound (``limit``, entries walked, depth, time):
            there may be more; narrow the search before treating this as complete.
    """

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GlobResult:
        """Build from a ``/glob`` answer."""
        return cls([FileInfo.from_dict(m) for m in _items_of(data)], bool(data.get("truncated")))


@dataclass
class GrepResult(_Matches[GrepMatch]):
    """Lines holding a literal text.

    Attributes:
        matches: The lines, in the order the server found them.
        truncated: The server stopped at a bound (``limit``, bytes read, time): there may be
            more.
    """

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GrepResult:
        """Build from a ``/grep`` answer."""
        return cls([GrepMatch.from_dict(m) for m in _items_of(data)], bool(data.get("truncated")))


@dataclass
class FileStat:
    """What ``HEAD /download`` says about a file, without its bytes.

    Attributes:
        size_bytes: Its size.
        etag: Strong validator of its current contents (opaque: compare it, never parse it);
            pass it as ``if_range`` or ``if_none_match`` to :meth:`~hutch.AsyncSandbox.read_range`.
        last_modified: HTTP date of its last change (whole seconds).
        content_type: The type the server serves it as.
    """

    size_bytes: int
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> FileStat:
        """Build from the headers of a HEAD answer (lower-case names, as httpx gives them)."""
        length = headers.get("content-length", "")
        return cls(
            size_bytes=int(length) if length.isdigit() else 0,
            etag=headers.get("etag"),
            last_modified=headers.get("last-modified"),
            content_type=headers.get("content-type"),
        )


@dataclass
class FileChunk:
    """The bytes of a ranged read and where they sit in the file.

    Attributes:
        content: The bytes (empty when ``unchanged``).
        etag: Validator of the version they came from: pass it as ``if_range`` for the next
            chunk so a rewrite restarts the read instead of splicing two versions.
        total_bytes: The file's size, if the server said.
        start: Offset of ``content[0]`` in the file.
        partial: The server sent only the range (206). False after a ranged request means the
            whole file came (``if_range`` no longer matched): start over from ``content``.
        unchanged: ``if_none_match`` still matched (304); no bytes came.
        last_modified: HTTP date of the file's last change.
    """

    content: bytes
    etag: str | None = None
    total_bytes: int | None = None
    start: int = 0
    partial: bool = False
    unchanged: bool = False
    last_modified: str | None = None

    @property
    def end(self) -> int:
        """Offset just past the last byte of ``content``."""
        return self.start + len(self.content)

    @classmethod
    def from_response(cls, status: int, headers: Mapping[str, str], content: bytes) -> FileChunk:
        """Build from the status, headers and body of a ``GET /download`` with ``Range``."""
        etag, modified = headers.get("etag"), headers.get("last-modified")
        if status == 304:
            return cls(content=b"", etag=etag, unchanged=True, last_modified=modified)
        if status != 206:
            # The whole file (If-Range failed, or the server ignored the range).
            return cls(content, etag, len(content), 0, last_modified=modified)
        start, total = _content_range(headers.get("content-range", ""))
        return cls(content, etag, total, start, partial=True, last_modified=modified)


def _content_range(value: str) -> tuple[int, int | None]:
    """First byte and total size of ``Content-Range: bytes a-b/n`` (``n`` may be ``*``)."""
    unit, _, spec = value.partition(" ")
    span, _, total = spec.partition("/")
    first = span.partition("-")[0].strip()
    if unit != "bytes" or not first.isdigit():
        return 0, None
    return int(first), int(total) if total.strip().isdigit() else None


def range_header(*, start: int | None, end: int | None, suffix_bytes: int | None) -> str:
    """The ``Range`` value of :meth:`~hutch.AsyncSandbox.read_range`'s arguments.

    Raises:
        ValueError: No range, ``suffix_bytes`` with ``start``/``end``, or a negative or
            backwards range.
    """
    if suffix_bytes is not None:
        if start is not None or end is not None:
            raise ValueError("suffix_bytes reads the last N bytes; do not pass start or end too")
        if suffix_bytes < 1:
            raise ValueError(f"suffix_bytes must be at least 1 (got {suffix_bytes})")
        return f"bytes=-{suffix_bytes}"
    if start is None:
        raise ValueError("Pass start (and optionally end, inclusive), or suffix_bytes")
    if start < 0:
        raise ValueError(f"start must not be negative (got {start}); use suffix_bytes")
    if end is None:
        return f"bytes={start}-"
    if end < start:
        raise ValueError(f"end ({end}) must not be before start ({start}); end is inclusive")
    return f"bytes={start}-{end}"


@dataclass
class DownloadURL:
    """A link that serves one file of a sandbox to anyone holding it, with no API key.

    It is pinned to the sandbox, the path and the response headers asked for, not to the
    file's contents: write a new file and mint a new link when the contents change.

    Attributes:
        download_url: The URL (GET, HEAD and ``Range`` work).
        token: The signed token inside it.
        expires_at: When it stops working (ISO 8601), or None if never.
    """

    download_url: str
    token: str
    expires_at: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DownloadURL:
        """Build from a ``POST /boxes/{name}/download-url`` answer."""
        return cls(
            download_url=data.get("download_url", ""),
            token=data.get("token", ""),
            expires_at=data.get("expires_at"),
        )
