"""Local container image store: import OCI/docker/rootfs images, pull from registries, unpack
layers safely.

``ImageStore(root).import_path(name, path)`` imports an image; ``get``/``list``/``remove``/``gc``
manage them. ``ImagePuller(store, RegistryConfig(...))`` finds an image in the store or pulls it
with skopeo. Unpacked layers (``Image.layers``, bottom first) are ready for overlayfs.
"""

from ._pull import Credentials, ImagePuller, ImagePullError, RegistryConfig
from ._reference import (
    is_local_only,
    normalize_reference,
    normalize_registry,
    qualify_reference,
)
from ._store import GcResult, ImageStore
from ._types import (
    Image,
    ImageConfig,
    ImageError,
    ImageImportError,
    ImageNotFoundError,
    UnsafeLayerError,
)

__all__ = [
    "Credentials",
    "GcResult",
    "Image",
    "ImageConfig",
    "ImageError",
    "ImageImportError",
    "ImageNotFoundError",
    "ImagePullError",
    "ImagePuller",
    "ImageStore",
    "RegistryConfig",
    "UnsafeLayerError",
    "is_local_only",
    "normalize_reference",
    "normalize_registry",
    "qualify_reference",
]
