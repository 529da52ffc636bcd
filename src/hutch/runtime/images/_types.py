"""Image-store value types and errors (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class ImageError(Exception):
    """Base of image-store errors; ``str()`` is a message a user can act on."""


class ImageNotFoundError(ImageError):
    """No image of that name in the local store."""


class ImageImportError(ImageError):
    """The archive or layout could not be imported (unknown format, corrupt, unsupported)."""


class UnsafeLayerError(ImageImportError):
    """A layer tar entry would land outside its layer directory or is otherwise not allowed."""


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config a sandbox uses."""

    env: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Image:
    """An image in the local store.

    ``layers`` are directories of unpacked layers, **bottom first**, ready to be used as overlayfs
    ``lowerdir`` entries (overlayfs wants them top first: reverse them). OCI whiteouts are already
    converted to overlayfs whiteouts (0/0 character devices, ``trusted.overlay.opaque=y``).
    """

    name: str  # canonical reference, e.g. "local/python:3.11"
    digest: str  # "sha256:<hex>" of the manifest (or of the synthesized one for rootfs tarballs)
    layers: tuple[Path, ...]
    config: ImageConfig
    size: int  # bytes of unpacked layers
    created_at: str  # ISO-8601 UTC
