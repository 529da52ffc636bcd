"""Reading OCI image layouts and ``docker save`` layouts (from a directory or a tar).

The readers return an :class:`ImageSource`: the image config plus one :class:`LayerSource` per
layer (how to open the blob and which digests the image claims for it). Manifests, indexes and
configs are digest-checked here; layer blobs are checked by the store while it unpacks them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import stat
import tarfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from ._reference import normalize_reference
from ._types import ImageConfig, ImageError, ImageImportError

__all__ = [
    "MT_OCI_MANIFEST",
    "DirFiles",
    "ImageSource",
    "LayerSource",
    "TarFiles",
    "docker_manifest",
    "host_arch",
    "open_regular",
    "read_docker",
    "read_oci",
    "relative_parts",
]

# Manifests, indexes and configs are small; a cap keeps a hostile "config" from eating memory.
_JSON_LIMIT = 32 << 20
_MAX_INDEX_DEPTH = 4
_MAX_LINK_HOPS = 16

_MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
_MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_INDEX_TYPES = frozenset({_MT_OCI_INDEX, _MT_DOCKER_LIST})
_MANIFEST_TYPES = frozenset({MT_OCI_MANIFEST, _MT_DOCKER_MANIFEST})
_REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

_DIGEST_RE = re.compile(r"^(?:(sha256):([0-9a-f]{64})|(sha512):([0-9a-f]{128}))$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")

_GO_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def host_arch() -> str:
    """The host's architecture in OCI/Go spelling (``amd64``, ``arm64``, ...)."""
    machine = platform.machine().lower()
    return _GO_ARCH.get(machine, machine)


@dataclass(frozen=True)
class LayerSource:
    """One layer blob of an image being imported.

    ``open`` returns a context manager yielding the blob's bytes exactly as stored (possibly
    compressed). ``digest`` is the digest the image claims for those bytes and ``diff_id`` the one
    it claims for the uncompressed tar; either may be unknown. ``verified`` means the digests
    were computed by us from this very source, so reusing a stored layer needs no re-check.
    """

    open: Callable[[], AbstractContextManager[IO[bytes]]]
    label: str
    media_type: str = ""
    digest: str | None = None
    diff_id: str | None = None
    verified: bool = False


@dataclass(frozen=True)
class ImageSource:
    """An image read from some input, ready to have its layers unpacked (bottom first)."""

    kind: str  # "oci-layout", "oci-archive", "docker-archive", "rootfs-tar", "rootfs-dir"
    config: ImageConfig
    layers: tuple[LayerSource, ...]
    # Digest of the image's manifest; None when the format has none (the store synthesizes one
    # from the config and the layer digests once the layers are known).
    manifest_digest: str | None
    # The image's config document as stored, if it has one (used for the synthesized digest).
    config_bytes: bytes | None


class _Files(Protocol):
    """Read access to named files of a layout (a directory or the members of a tar)."""

    def exists(self, name: str) -> bool: ...

    def open(self, name: str) -> AbstractContextManager[IO[bytes]]: ...


def relative_parts(name: str) -> tuple[str, ...] | None:
    """Components of an archive-relative name, or None if it climbs out of the archive."""
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(comp)
    return tuple(parts)


def open_regular(path: Path) -> IO[bytes]:
    """Open a regular file for reading without following a final symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImageImportError(f"{path} is missing") from None
    except OSError as exc:
        raise ImageImportError(f"cannot open {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageImportError(f"{path} is not a regular file")
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class DirFiles:
    """Files of a layout directory. Names are relative; ``..`` is refused."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _path(self, name: str) -> Path:
        parts = relative_parts(name)
        if not parts:
            raise ImageImportError(f"{self._root}: invalid file reference {name!r}")
        return self._root.joinpath(*parts)

    def exists(self, name: str) -> bool:
        parts = relative_parts(name)
        return parts is not None and bool(parts) and self._root.joinpath(*parts).is_file()

    def open(self, name: str) -> AbstractContextManager[IO[bytes]]:
        return open_regular(self._path(name))


class TarFiles:
    """Members of a seekable, uncompressed tar, read in place (no extraction)."""

    def __init__(self, tar: tarfile.TarFile, label: str) -> None:
        self._tar = tar
        self._label = label
        self._members: dict[tuple[str, ...], tarfile.TarInfo] = {}
        for member in tar:
            parts = relative_parts(member.name)
            if parts:
                self._members[parts] = member  # later entries win, as when extracting

    def _resolve(self, name: str) -> tarfile.TarInfo | None:
        parts = relative_parts(name)
        for _ in range(_MAX_LINK_HOPS):
            if not parts:
                return None
            member = self._members.get(parts)
            if member is None or member.isreg():
                return member
            if member.islnk():
                parts = relative_parts(member.linkname)
            elif member.issym() and not member.linkname.startswith("/"):
                # Old `docker save` archives symlink duplicate layers to each other.
                parts = relative_parts("/".join((*parts[:-1], member.linkname)))
            else:
                return None
        return None

    def exists(self, name: str) -> bool:
        return self._resolve(name) is not None

    def open(self, name: str) -> AbstractContextManager[IO[bytes]]:
        member = self._resolve(name)
        stream = self._tar.extractfile(member) if member is not None else None
        if stream is None:
            raise ImageImportError(f"{self._label}: {name!r} is missing from the archive")
        return stream


def _parse_digest(value: object, what: str) -> tuple[str, str]:
    if not isinstance(value, str):
        raise ImageImportError(f"{what}: digest missing or not a string")
    match = _DIGEST_RE.match(value)
    if match is None:
        raise ImageImportError(f"{what}: unsupported or malformed digest {value!r}")
    algorithm = match.group(1) or match.group(3)
    hex_ = match.group(2) or match.group(4)
    return algorithm, hex_


def _read_limited(stream: IO[bytes], what: str) -> bytes:
    data = stream.read(_JSON_LIMIT + 1)
    if len(data) > _JSON_LIMIT:
        raise ImageImportError(f"{what} is larger than {_JSON_LIMIT >> 20} MiB")
    return data


def _parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageImportError(f"{what} is not valid JSON: {exc}") from None


def _read_json_file(files: _Files, name: str, what: str) -> Any:
    with files.open(name) as stream:
        return _parse_json(_read_limited(stream, what), what)


def _read_blob(files: _Files, descriptor: dict[str, Any], what: str) -> bytes:
    """Read a small blob (manifest, index, config) and verify its digest."""
    algorithm, hex_ = _parse_digest(descriptor.get("digest"), what)
    name = f"blobs/{algorithm}/{hex_}"
    if not files.exists(name):
        raise ImageImportError(f"{what}: blob {algorithm}:{hex_} is missing from the layout")
    with files.open(name) as stream:
        data = _read_limited(stream, what)
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != hex_:
        raise ImageImportError(
            f"{what}: digest mismatch (expected {algorithm}:{hex_}, got {algorithm}:{actual})"
        )
    return data


def _as_dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImageImportError(f"{what} is not a JSON object")
    return value


def _as_list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ImageImportError(f"{what} is not a JSON array")
    return value


def _str_list(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]  # docker tolerates a bare string for Cmd/Entrypoint
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageImportError(f"image config {what} must be a list of strings")
    return list(value)


def _optional_str(value: object, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImageImportError(f"image config {what} must be a string")
    return value


def parse_config(doc: object) -> tuple[ImageConfig, list[str] | None]:
    """Extract the sandbox-relevant fields and ``rootfs.diff_ids`` from an image config."""
    config = _as_dict(doc, "image config")
    os_name = config.get("os")
    if isinstance(os_name, str) and os_name and os_name != "linux":
        raise ImageImportError(f"the image is for {os_name!r}; only linux images are supported")
    inner = config.get("config") or {}
    inner = _as_dict(inner, "image config 'config'")
    image_config = ImageConfig(
        env=_str_list(inner.get("Env"), "Env"),
        working_dir=_optional_str(inner.get("WorkingDir"), "WorkingDir"),
        user=_optional_str(inner.get("User"), "User"),
        entrypoint=_str_list(inner.get("Entrypoint"), "Entrypoint"),
        cmd=_str_list(inner.get("Cmd"), "Cmd"),
    )
    rootfs = config.get("rootfs")
    diff_ids: list[str] | None = None
    if isinstance(rootfs, dict) and rootfs.get("diff_ids") is not None:
        diff_ids = []
        for value in _as_list(rootfs["diff_ids"], "image config rootfs.diff_ids"):
            algorithm, hex_ = _parse_digest(value, "image config rootfs.diff_ids")
            if algorithm != "sha256":
                raise ImageImportError("image config rootfs.diff_ids must be sha256 digests")
            diff_ids.append(f"{algorithm}:{hex_}")
    return image_config, diff_ids


def _check_layer_media_type(media_type: str, what: str) -> None:
    if "zstd" in media_type:
        raise ImageImportError(
            f"{what} is zstd-compressed ({media_type}); zstd layers are not supported yet. "
            "Re-export the image with gzip layers (e.g. skopeo copy --dest-compress-format gzip)"
        )
    if media_type and "tar" not in media_type:
        raise ImageImportError(f"{what} has unsupported media type {media_type!r}")


# -- OCI --------------------------------------------------------------------------------------


def _platform_of(descriptor: dict[str, Any]) -> tuple[str, str]:
    plat = descriptor.get("platform")
    if not isinstance(plat, dict):
        return "", ""
    return str(plat.get("os", "")), str(plat.get("architecture", ""))


def _pick_descriptor(manifests: list[Any], tag: str | None, what: str) -> dict[str, Any]:
    """Choose one entry of an index.

    A ``ref.name`` annotation equal to the requested tag narrows the choice first (an OCI layout
    may hold several tagged images). Then the host's architecture is preferred, then
    linux/amd64, then the first real image (attestation entries, ``unknown/unknown``, are not).
    """
    candidates = [_as_dict(m, f"{what} entry") for m in manifests]
    if not candidates:
        raise ImageImportError(f"{what} lists no manifests")
    if tag is not None:
        named = [
            d for d in candidates if (d.get("annotations") or {}).get(_REF_NAME_ANNOTATION) == tag
        ]
        candidates = named or candidates
    if len(candidates) == 1:
        return candidates[0]
    for wanted in (("linux", host_arch()), ("linux", "amd64")):
        for descriptor in candidates:
            if _platform_of(descriptor) == wanted:
                return descriptor
    for descriptor in candidates:
        if _platform_of(descriptor)[0] != "unknown":
            return descriptor
    return candidates[0]


def read_oci(files: _Files, kind: str, label: str, tag: str | None) -> ImageSource:
    """Read the image an OCI layout holds: index.json -> (nested indexes) -> manifest.

    ``tag`` picks among several tagged images (``ref.name``). Manifests, indexes and the config
    are digest-checked; zstd or non-tar layer media types are refused up front, before any
    layer is unpacked. Raises :class:`ImageImportError`.
    """
    layout = _as_dict(_read_json_file(files, "oci-layout", f"{label}: oci-layout"), "oci-layout")
    if "imageLayoutVersion" not in layout:
        raise ImageImportError(f"{label}: oci-layout has no imageLayoutVersion")
    index = _as_dict(_read_json_file(files, "index.json", f"{label}: index.json"), "index.json")
    descriptor = _pick_descriptor(
        _as_list(index.get("manifests"), f"{label}: index.json manifests"), tag, "index.json"
    )
    for depth in range(_MAX_INDEX_DEPTH + 1):
        what = f"{label}: manifest {descriptor.get('digest')}"
        data = _read_blob(files, descriptor, what)
        doc = _as_dict(_parse_json(data, what), what)
        media_type = descriptor.get("mediaType") or doc.get("mediaType")
        if not media_type:
            media_type = _MT_OCI_INDEX if "manifests" in doc else MT_OCI_MANIFEST
        if media_type in _MANIFEST_TYPES:
            break
        if media_type not in _INDEX_TYPES:
            raise ImageImportError(f"{what} has unsupported media type {media_type!r}")
        if depth == _MAX_INDEX_DEPTH:
            raise ImageImportError(f"{label}: image indexes are nested too deeply")
        descriptor = _pick_descriptor(_as_list(doc.get("manifests"), what), None, what)
    manifest_digest = "{}:{}".format(*_parse_digest(descriptor.get("digest"), what))

    config_desc = _as_dict(doc.get("config"), f"{what} config")
    config_bytes = _read_blob(files, config_desc, f"{label}: image config")
    image_config, diff_ids = parse_config(_parse_json(config_bytes, f"{label}: image config"))
    layer_descs = [_as_dict(d, f"{what} layer") for d in _as_list(doc.get("layers"), what)]
    if diff_ids is not None and len(diff_ids) != len(layer_descs):
        raise ImageImportError(
            f"{label}: manifest has {len(layer_descs)} layers but the config lists "
            f"{len(diff_ids)} diff_ids"
        )
    layers: list[LayerSource] = []
    for i, layer_desc in enumerate(layer_descs):
        algorithm, hex_ = _parse_digest(layer_desc.get("digest"), f"{what} layer {i + 1}")
        layer_label = f"{label}: layer {i + 1}/{len(layer_descs)} ({algorithm}:{hex_[:12]})"
        media_type = str(layer_desc.get("mediaType") or "")
        _check_layer_media_type(media_type, layer_label)
        name = f"blobs/{algorithm}/{hex_}"
        if not files.exists(name):
            raise ImageImportError(f"{layer_label}: blob is missing from the layout")
        layers.append(
            LayerSource(
                open=_opener(files, name),
                label=layer_label,
                media_type=media_type,
                digest=f"{algorithm}:{hex_}",
                diff_id=diff_ids[i] if diff_ids is not None else None,
            )
        )
    return ImageSource(kind, image_config, tuple(layers), manifest_digest, config_bytes)


def _opener(files: _Files, name: str) -> Callable[[], AbstractContextManager[IO[bytes]]]:
    return lambda: files.open(name)


# -- docker save ------------------------------------------------------------------------------


def docker_manifest(files: _Files) -> list[dict[str, Any]] | None:
    """The entries of a ``docker save`` manifest.json, or None if this is not one.

    A top-level manifest.json of another shape does not make an archive a docker-save one
    (a root filesystem may well contain such a file).
    """
    if not files.exists("manifest.json"):
        return None
    try:
        doc = _read_json_file(files, "manifest.json", "manifest.json")
    except ImageImportError:
        return None
    if not isinstance(doc, list) or not doc:
        return None
    if not all(isinstance(e, dict) and "Config" in e and "Layers" in e for e in doc):
        return None
    return doc


def read_docker(
    files: _Files, entries: list[dict[str, Any]], kind: str, label: str, name: str
) -> ImageSource:
    """Read the image a ``docker save`` layout holds.

    Several images may be listed; the one whose ``RepoTags`` match ``name`` wins, else the
    first. Layers are checked against the config's ``rootfs.diff_ids`` (the format has no other
    layer digests). Raises :class:`ImageImportError`.
    """
    entry = entries[0]
    for candidate in entries:
        tags = candidate.get("RepoTags") or []
        if not isinstance(tags, list):
            continue
        normalized: set[str] = set()
        for tag in tags:
            # Docker writes fully qualified names ("docker.io/library/busybox:latest"); this
            # store's names have no default registry, so compare the short forms too.
            text = str(tag)
            for prefix in ("docker.io/library/", "docker.io/"):
                text = text.removeprefix(prefix)
            for variant in (str(tag), text):
                try:
                    normalized.add(normalize_reference(variant))
                except ImageError:
                    continue
        if name in normalized:
            entry = candidate
            break
    config_name = entry["Config"]
    if not isinstance(config_name, str):
        raise ImageImportError(f"{label}: manifest.json Config is not a string")
    with files.open(config_name) as stream:
        config_bytes = _read_limited(stream, f"{label}: image config")
    # The config file is named after its sha256 ("<hex>.json" or "blobs/sha256/<hex>").
    stem = config_name.rsplit("/", 1)[-1].removesuffix(".json")
    if _HEX64_RE.match(stem) and hashlib.sha256(config_bytes).hexdigest() != stem:
        raise ImageImportError(f"{label}: image config {config_name} does not match its digest")
    image_config, diff_ids = parse_config(_parse_json(config_bytes, f"{label}: image config"))
    layer_names = _as_list(entry["Layers"], f"{label}: manifest.json Layers")
    if diff_ids is None or len(diff_ids) != len(layer_names):
        raise ImageImportError(
            f"{label}: manifest.json lists {len(layer_names)} layers but the config lists "
            f"{'no' if diff_ids is None else len(diff_ids)} diff_ids"
        )
    layers: list[LayerSource] = []
    for i, layer_name in enumerate(layer_names):
        layer_label = f"{label}: layer {i + 1}/{len(layer_names)} ({layer_name})"
        if not isinstance(layer_name, str) or not files.exists(layer_name):
            raise ImageImportError(f"{layer_label}: missing from the archive")
        layers.append(
            LayerSource(
                open=_opener(files, layer_name),
                label=layer_label,
                diff_id=diff_ids[i],
            )
        )
    return ImageSource(kind, image_config, tuple(layers), None, config_bytes)
