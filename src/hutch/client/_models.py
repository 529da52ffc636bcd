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
