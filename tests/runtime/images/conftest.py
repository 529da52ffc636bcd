"""Fixtures for image-store tests: tar/OCI-layout builders, a busybox rootfs, a store."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch.runtime.images import ImageStore

Member = tuple[tarfile.TarInfo, bytes | None]

MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"

BUSYBOX = Path("/bin/busybox")


def _info(name: str, type_: bytes, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.mode = mode
    info.uid = uid
    info.gid = gid
    info.mtime = 1_600_000_000
    return info


class Builders:
    """Builders for hand-made layer tars and OCI layouts (all deterministic)."""

    @staticmethod
    def file(
        name: str, data: bytes = b"", *, mode: int = 0o644, uid: int = 0, gid: int = 0
    ) -> Member:
        info = _info(name, tarfile.REGTYPE, mode, uid, gid)
        info.size = len(data)
        return info, data

    @staticmethod
    def dir(name: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Member:
        return _info(name, tarfile.DIRTYPE, mode, uid, gid), None

    @staticmethod
    def symlink(name: str, target: str) -> Member:
        info = _info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        return info, None

    @staticmethod
    def hardlink(name: str, target: str) -> Member:
        info = _info(name, tarfile.LNKTYPE, 0o644)
        info.linkname = target
        return info, None

    @staticmethod
    def chardev(name: str, major: int = 1, minor: int = 3) -> Member:
        info = _info(name, tarfile.CHRTYPE, 0o666)
        info.devmajor, info.devminor = major, minor
        return info, None

    @staticmethod
    def fifo(name: str) -> Member:
        return _info(name, tarfile.FIFOTYPE, 0o640), None

    @staticmethod
    def tar(members: Iterable[Member], *, compress: bool = False) -> bytes:
        """An (optionally gzip-compressed) PAX tar of ``members``, in order."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        raw = buf.getvalue()
        return gzip.compress(raw, mtime=0) if compress else raw

    @staticmethod
    def tar_of_dir(root: Path) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(root, arcname=".")
        return buf.getvalue()

    @staticmethod
    def write_blob(layout: Path, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        blob = layout / "blobs" / "sha256" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        return f"sha256:{digest}"

    @classmethod
    def oci_layout(
        cls,
        layout: Path,
        layers: list[bytes],
        *,
        config: dict[str, Any] | None = None,
        compress: bool = True,
        media_type: str | None = None,
        tag: str = "latest",
        wrap_in_index: bool = False,
    ) -> str:
        """Write an OCI image layout with ``layers`` (uncompressed tars, bottom first).

        Returns the manifest digest. ``wrap_in_index`` puts the manifest inside a nested
        multi-arch index (next to a bogus arm64 entry) to exercise platform selection.
        """
        layout.mkdir(parents=True, exist_ok=True)
        (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
        config_doc = {
            "architecture": "amd64",
            "os": "linux",
            "config": config if config is not None else {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        config_bytes = json.dumps(config_doc).encode()
        layer_descs = []
        for layer in layers:
            blob = gzip.compress(layer, mtime=0) if compress else layer
            layer_descs.append(
                {
                    "mediaType": media_type or (MT_LAYER_GZIP if compress else MT_LAYER_TAR),
                    "digest": cls.write_blob(layout, blob),
                    "size": len(blob),
                }
            )
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {
                "mediaType": MT_CONFIG,
                "digest": cls.write_blob(layout, config_bytes),
                "size": len(config_bytes),
            },
            "layers": layer_descs,
        }
        manifest_bytes = json.dumps(manifest).encode()
        manifest_digest = cls.write_blob(layout, manifest_bytes)
        descriptor: dict[str, Any] = {
            "mediaType": MT_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest_bytes),
        }
        if wrap_in_index:
            other = json.dumps({**manifest, "layers": []}).encode()
            nested = {
                "schemaVersion": 2,
                "mediaType": MT_INDEX,
                "manifests": [
                    {
                        "mediaType": MT_MANIFEST,
                        "digest": cls.write_blob(layout, other),
                        "size": len(other),
                        "platform": {"os": "linux", "architecture": "s390x"},
                    },
                    {**descriptor, "platform": {"os": "linux", "architecture": "amd64"}},
                ],
            }
            nested_bytes = json.dumps(nested).encode()
            descriptor = {
                "mediaType": MT_INDEX,
                "digest": cls.write_blob(layout, nested_bytes),
                "size": len(nested_bytes),
            }
        descriptor["annotations"] = {"org.opencontainers.image.ref.name": tag}
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [descriptor]}
        (layout / "index.json").write_text(json.dumps(index))
        return manifest_digest

    @staticmethod
    def archive_dir(src: Path, dest: Path, *, compress: bool = False) -> Path:
        """Tar the contents of ``src`` (e.g. an OCI layout) into ``dest``."""
        with tarfile.open(dest, "w:gz" if compress else "w") as tar:
            for entry in sorted(src.iterdir()):
                tar.add(entry, arcname=entry.name)
        return dest


@pytest.fixture
def build() -> Builders:
    return Builders()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.fixture
def busybox_rootfs(tmp_path: Path) -> Path:
    """A minimal root filesystem: static busybox plus a few applet symlinks."""
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    root = tmp_path / "busybox-rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "echo", "cat", "ls"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return root


@pytest.fixture
def skopeo_copy() -> Callable[[str, str], None]:
    """``skopeo copy SRC DEST`` (used only to produce fixtures in other formats)."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed")

    def copy(src: str, dest: str) -> None:
        subprocess.run(
            [skopeo, "--insecure-policy", "copy", "--quiet", src, dest],
            check=True,
            capture_output=True,
            timeout=60,
        )

    return copy


@pytest.fixture
def overlay_mount(tmp_path: Path) -> Iterator[list[Path]]:
    """Collects overlayfs mount points and unmounts them at teardown."""
    mounts: list[Path] = []
    yield mounts
    for target in reversed(mounts):
        subprocess.run(["umount", str(target)], check=False, capture_output=True)
