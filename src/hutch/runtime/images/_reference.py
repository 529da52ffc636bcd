"""Image references: normalization (``local/busybox`` -> ``local/busybox:latest``) and
Docker-style qualification for pulls (``python:3.12-slim`` -> ``docker.io/library/python:...``).
"""

from __future__ import annotations

import re

from ._types import ImageError

__all__ = [
    "LOCAL_NAMESPACE",
    "is_local_only",
    "normalize_reference",
    "normalize_registry",
    "qualify_reference",
]

# The grammar follows the distribution reference format docker and OCI tools use.
_DOMAIN_COMPONENT = r"(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])"
_DOMAIN_RE = re.compile(rf"^{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?$")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[a-z][a-z0-9]*(?:[-_+.][a-z][a-z0-9]*)*:[0-9a-f]{32,}$")
_MAX_REPOSITORY_LENGTH = 255
# containers-transports(5) prefixes: "oci:/some/dir" must never reach skopeo as a local path.
# "docker" itself is absent on purpose: "docker:24" is the Docker Hub image of that name, and
# "docker://..." is already refused by the grammar (empty path components).
_TRANSPORTS = frozenset(
    {
        "containers-storage",
        "dir",
        "docker-archive",
        "docker-daemon",
        "oci",
        "oci-archive",
        "ostree",
        "sif",
        "tarball",
    }
)
#: Names under ``local/`` are only ever imported, never pulled (``hutch image import``).
LOCAL_NAMESPACE = "local"
DOCKER_HUB = "docker.io"


def _invalid(name: str, why: str) -> ImageError:
    return ImageError(
        f"invalid image name {name!r}: {why} "
        "(expected something like 'busybox', 'local/python:3.11' or 'registry:5000/team/app:v1')"
    )


def normalize_reference(name: str) -> str:
    """Return the canonical form of an image reference.

    Surrounding whitespace is stripped, the repository (and registry host) part is lowercased,
    and ``:latest`` is appended when there is neither a tag nor a digest; the tag keeps its case.
    No default registry or ``library/`` prefix is added: names are local to this store.
    Raises :class:`ImageError` with a message naming the problem for anything that is not a
    plausible reference (empty, inner whitespace, bad characters, empty path components, ...).
    """
    text = name.strip()
    if not text:
        raise _invalid(name, "the name is empty")
    if any(ch.isspace() for ch in text):
        raise _invalid(name, "it contains whitespace")
    transport = text.split(":", 1)[0].lower()
    if ":" in text and transport in _TRANSPORTS:
        raise _invalid(name, f"{transport + ':'!r} is a skopeo transport, not a registry reference")
    remainder, _, digest = text.partition("@")
    if "@" in text:
        digest = digest.lower()
        if not _DIGEST_RE.match(digest):
            raise _invalid(name, f"{digest!r} is not a digest like 'sha256:<hex>'")
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    tag = ""
    repository = remainder
    if colon > slash:  # a colon in the last component separates the tag
        repository, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise _invalid(name, f"{tag!r} is not a valid tag")
    repository = repository.lower()
    if not repository:
        raise _invalid(name, "the repository part is empty")
    if len(repository) > _MAX_REPOSITORY_LENGTH:
        raise _invalid(name, f"the repository is longer than {_MAX_REPOSITORY_LENGTH} characters")
    components = repository.split("/")
    first = components[0]
    # Like docker: a first component with a dot or port, or "localhost", names a registry.
    if len(components) > 1 and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN_RE.match(first):
            raise _invalid(name, f"{first!r} is not a valid registry host")
        components = components[1:]
    for component in components:
        if not _PATH_COMPONENT_RE.match(component):
            what = "an empty path component" if not component else f"{component!r}"
            raise _invalid(
                name,
                f"{what} is not allowed (use lowercase letters, digits and . _ - separators)",
            )
    if not tag and not digest:
        tag = "latest"
    return repository + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _split_domain(reference: str) -> tuple[str | None, str]:
    """``(registry host or None, rest)`` of a normalized reference, split like docker does."""
    first, sep, rest = reference.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return None, reference


def is_local_only(reference: str) -> bool:
    """True for names in the ``local/`` namespace: imported images, never pulled."""
    domain, rest = _split_domain(normalize_reference(reference))
    return domain is None and rest.startswith(LOCAL_NAMESPACE + "/")


def qualify_reference(reference: str, default_registry: str = DOCKER_HUB) -> str:
    """The fully qualified form of ``reference``, as a registry pull needs it.

    Like docker: a name whose first component is a host (it has a dot or a port, or is
    ``localhost``) keeps it; other names get ``default_registry``, and single-component names on
    Docker Hub get ``library/`` (``python:3.12-slim`` -> ``docker.io/library/python:3.12-slim``).
    The result is normalized (``:latest`` added when there is neither tag nor digest).
    """
    canonical = normalize_reference(reference)
    domain, rest = _split_domain(canonical)
    if domain is not None:
        return canonical
    registry = normalize_registry(default_registry)
    if registry == DOCKER_HUB and "/" not in rest.split(":", 1)[0].split("@", 1)[0]:
        rest = "library/" + rest
    return normalize_reference(f"{registry}/{rest}")


def normalize_registry(host: str) -> str:
    """Validate a registry host (``docker.io``, ``registry.example.com:5000``, ``localhost``)."""
    value = host.strip().lower()
    if value in ("index.docker.io", "registry-1.docker.io"):
        return DOCKER_HUB
    if not _DOMAIN_RE.match(value):
        raise ImageError(
            f"invalid registry {host!r}: expected a host name with an optional port, like "
            "'docker.io' or 'registry.example.com:5000'"
        )
    return value
