"""Detecting and reading the image formats ``ImageStore.import_path`` accepts.

Every input is turned into an :class:`ImageSource`: the image config plus a list of
:class:`LayerSource` (how to open each layer blob and which digests the image claims for it).
Nothing here unpacks layers or writes to the store; digest checks of JSON documents (manifests,
configs) happen here, digest checks of layers happen while they are unpacked.

Supported inputs, detected in this order:

1. an OCI image layout directory (``oci-layout`` + ``index.json``);
2. a directory in ``docker save`` layout (``manifest.json``);
3. any other directory: a root filesystem;
4. a tar file (optionally gzip/bzip2/xz compressed) holding 1. or 2. at its top level;
5. any other tar file: a root filesystem tarball.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import tarfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from ._layers import CHUNK_SIZE, LayerDigests, compression_of, decompressed
from ._layouts import (
    MT_OCI_MANIFEST,
    DirFiles,
    ImageSource,
    LayerSource,
    TarFiles,
    docker_manifest,
    host_arch,
    open_regular,
    read_docker,
    read_oci,
    relative_parts,
)
from ._types import ImageConfig, ImageImportError

__all__ = [
    "DEFAULT_PATH_ENV",
    "ImageSource",
    "LayerSource",
    "open_image_source",
    "synthesize_digest",
]

DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# -- root filesystems -------------------------------------------------------------------------


def _rootfs_config() -> ImageConfig:
    # A root filesystem carries no config; give it the PATH a shell expects.
    return ImageConfig(env=[DEFAULT_PATH_ENV])


def _file_digest(path: Path) -> str:
    with open_regular(path) as stream:
        hasher = hashlib.sha256()
        while chunk := stream.read(CHUNK_SIZE):
            hasher.update(chunk)
    return f"sha256:{hasher.hexdigest()}"


@contextmanager
def _dir_as_tar(root: Path) -> Iterator[IO[bytes]]:
    """Stream a tar of the directory ``root`` (symlinks stored, never followed).

    A producer thread writes the tar into a pipe the caller reads, so nothing is staged on
    disk or held in memory. A failure reading the directory is raised here, after the reader is
    done, and takes precedence: it explains the truncated stream the reader saw.
    """
    read_fd, write_fd = os.pipe()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            with (
                open(write_fd, "wb") as out,
                tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            ):
                tar.add(root, arcname=".", recursive=True)
        except BrokenPipeError:
            pass  # the reader stopped early; its own error is what matters
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=produce, name="hutch-image-dir-tar", daemon=True)
    thread.start()
    try:
        # Closing the reader makes a producer blocked on a full pipe fail with EPIPE and exit.
        with open(read_fd, "rb") as reader:
            yield reader
    finally:
        thread.join()
        if errors:
            raise ImageImportError(f"could not read {root}: {errors[0]}") from errors[0]


def _rootfs_tar(tar_path: Path, label: str) -> ImageSource:
    digest = _file_digest(tar_path)
    layer = LayerSource(
        open=lambda: open_regular(tar_path),
        label=f"{label}: root filesystem",
        digest=digest,
        diff_id=digest,  # the file is an uncompressed tar, so both digests are the same
        verified=True,
    )
    return ImageSource("rootfs-tar", _rootfs_config(), (layer,), None, None)


def _rootfs_dir(path: Path) -> ImageSource:
    layer = LayerSource(open=lambda: _dir_as_tar(path), label=f"{path}: root filesystem")
    return ImageSource("rootfs-dir", _rootfs_config(), (layer,), None, None)


# -- detection --------------------------------------------------------------------------------


def _decompress_to(path: Path, scratch: Path) -> Path:
    """Return ``path`` if it is uncompressed, else a decompressed copy inside ``scratch``.

    Archives are read with random access (the layout's JSON files can come anywhere in the
    tar), which a compressed stream cannot offer cheaply.
    """
    with open_regular(path) as stream:
        compression = compression_of(stream.read(16))
    if compression is None:
        return path
    out_path = scratch / "input.tar"
    try:
        with open_regular(path) as raw, open(out_path, "xb") as out:
            shutil.copyfileobj(decompressed(raw, compression, str(path)), out, CHUNK_SIZE)
    except (EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise ImageImportError(f"{path}: corrupt or truncated {compression} file: {exc}") from exc
    return out_path


_MARKERS = frozenset({"oci-layout", "index.json", "manifest.json"})


def _top_level_markers(tar_path: Path, label: str) -> tuple[set[str], int]:
    """One header-only pass: which layout marker files sit at the top, and how many members."""
    found: set[str] = set()
    count = 0
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            while (member := tar.next()) is not None:
                # Bound memory on huge root filesystem tarballs (undeclared in typeshed).
                tar.members = []  # type: ignore[attr-defined]
                count += 1
                parts = relative_parts(member.name)
                if parts and len(parts) == 1 and parts[0] in _MARKERS and member.isreg():
                    found.add(parts[0])
    except tarfile.TarError as exc:
        raise ImageImportError(
            f"{label} is not a tar archive ({exc}); expected an OCI image layout directory, "
            "an OCI archive, a `docker save` archive, or a root filesystem tarball "
            "(.tar, .tar.gz)"
        ) from None
    return found, count


@contextmanager
def open_image_source(path: Path, scratch: Path, name: str) -> Iterator[ImageSource]:
    """Detect the format of ``path`` and yield it as an :class:`ImageSource`.

    ``scratch`` is an empty private directory for temporary files (removed by the caller).
    ``name`` is the normalized reference being imported; it chooses among several images in a
    layout (OCI ``ref.name`` annotation, docker ``RepoTags``). The source's layer openers are
    only valid inside the ``with`` block. Raises :class:`ImageImportError`.
    """
    label = str(path)
    tag = _tag_of(name)
    if path.is_dir():
        files = DirFiles(path)
        if files.exists("oci-layout") and files.exists("index.json"):
            yield read_oci(files, "oci-layout", label, tag)
            return
        entries = docker_manifest(files)
        if entries is not None:
            yield read_docker(files, entries, "docker-archive", label, name)
            return
        yield _rootfs_dir(path)
        return
    if not path.exists():
        raise ImageImportError(f"{path}: no such file or directory")
    if not path.is_file():
        raise ImageImportError(f"{path} is neither a regular file nor a directory")
    tar_path = _decompress_to(path, scratch)
    markers, count = _top_level_markers(tar_path, label)
    if count == 0:
        raise ImageImportError(f"{label} is an empty tar archive")
    if {"oci-layout", "index.json"} <= markers or "manifest.json" in markers:
        try:
            # Not a `with` here: the archive must stay open while the caller reads layers.
            tar = tarfile.open(tar_path, mode="r:")  # noqa: SIM115
        except tarfile.TarError as exc:
            raise ImageImportError(f"{label}: cannot read archive: {exc}") from None
        with tar:
            tar_files = TarFiles(tar, label)
            if {"oci-layout", "index.json"} <= markers:
                yield read_oci(tar_files, "oci-archive", label, tag)
                return
            entries = docker_manifest(tar_files)
            if entries is not None:
                yield read_docker(tar_files, entries, "docker-archive", label, name)
                return
    yield _rootfs_tar(tar_path, label)


def _tag_of(name: str) -> str | None:
    reference = name.split("@", 1)[0]
    last = reference.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def synthesize_digest(source: ImageSource, layers: list[LayerDigests]) -> str:
    """A stable manifest digest for formats without a manifest (docker-save, root filesystems).

    It is the digest of the OCI manifest that would describe the image with uncompressed
    layers, so importing the same content twice yields the same digest.
    """
    config_bytes = source.config_bytes
    if config_bytes is None:
        config_doc = {
            "architecture": host_arch(),
            "os": "linux",
            "config": {"Env": source.config.env},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        }
        config_bytes = json.dumps(config_doc, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": f"sha256:{hashlib.sha256(config_bytes).hexdigest()}",
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer.diff_id,
                "size": layer.tar_size,
            }
            for layer in layers
        ],
    }
    data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return f"sha256:{hashlib.sha256(data).hexdigest()}"
