"""Local container image store: import OCI/docker/rootfs images, unpack layers safely.

``ImageStore(root).import_path(name, path)`` imports an image; ``get``/``list``/``remove`` manage
them. Unpacked layers (``Image.layers``, bottom first) are ready for overlayfs.
"""

from ._reference import normalize_reference
from ._store import ImageStore
from ._types import (
    Image,
    ImageConfig,
    ImageError,
    ImageImportError,
    ImageNotFoundError,
    UnsafeLayerError,
)

__all__ = [
    "Image",
    "ImageConfig",
    "ImageError",
    "ImageImportError",
    "ImageNotFoundError",
    "ImageStore",
    "UnsafeLayerError",
    "normalize_reference",
]
