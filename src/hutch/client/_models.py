"""Plain data the SDK returns (spec §7).

Every ``from_dict`` reads each field with its documented default, so a missing field never fails,
and a JSON ``null`` where an object or list belongs counts as absent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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
