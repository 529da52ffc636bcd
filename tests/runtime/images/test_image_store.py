"""ImageStore: input formats, lookups, layer sharing, removal and import errors."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from hutch.runtime.images import (
    ImageConfig,
    ImageError,
    ImageImportError,
    ImageNotFoundError,
    ImageStore,
)
from hutch.runtime.images import _store as store_module
from hutch.runtime.images._layers import unpack_layer

if TYPE_CHECKING:
    from conftest import Builders

pytestmark = pytest.mark.root

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

FULL_CONFIG = {
    "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
    "WorkingDir": "/work",
    "User": "1000:1000",
    "Entrypoint": ["/bin/sh", "-c"],
    "Cmd": ["echo hi"],
}


def layer_a(build: Builders) -> bytes:
    return build.tar([build.dir("etc/"), build.file("etc/os-release", b"ID=test\n")])


def layer_b(build: Builders) -> bytes:
    return build.tar([build.dir("app/"), build.file("app/main", b"print(1)\n", mode=0o755)])


def layer_c(build: Builders) -> bytes:
    return build.tar([build.file("app/extra", b"extra")])


def layer_dirs(store: ImageStore) -> set[str]:
    return {p.name for p in (store.root / "layers" / "sha256").iterdir() if p.is_dir()}


def diff_hex(layer: bytes) -> str:
    return hashlib.sha256(layer).hexdigest()


@pytest.fixture
def unpack_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every layer the store unpacks."""
    calls: list[Path] = []
    real = unpack_layer

    def counting(raw: Any, dest: Path, **kwargs: Any) -> Any:
        calls.append(dest)
        return real(raw, dest, **kwargs)

    monkeypatch.setattr(store_module, "unpack_layer", counting)
    return calls


# -- formats ---------------------------------------------------------------------------------


def test_import_oci_layout_directory(store: ImageStore, tmp_path: Path, build: Builders) -> None:
    """An OCI layout dir imports with its manifest digest, config fields and bottom-first layers."""
    a, b = layer_a(build), layer_b(build)
    digest = build.oci_layout(tmp_path / "oci", [a, b], config=FULL_CONFIG)
    image = store.import_path("local/app:1.0", tmp_path / "oci")
    assert image.name == "local/app:1.0"
    assert image.digest == digest
    assert image.config == ImageConfig(
        env=["PATH=/usr/bin:/bin", "LANG=C.UTF-8"],
        working_dir="/work",
        user="1000:1000",
        entrypoint=["/bin/sh", "-c"],
        cmd=["echo hi"],
    )
    assert [p.name for p in image.layers] == [diff_hex(a), diff_hex(b)]
    assert all(p.is_absolute() and p.is_dir() for p in image.layers)
    assert (image.layers[0] / "etc" / "os-release").read_bytes() == b"ID=test\n"
    assert (image.layers[1] / "app" / "main").read_bytes() == b"print(1)\n"
    assert image.size == len(b"ID=test\n") + len(b"print(1)\n")
    assert image.created_at.endswith("Z")


def test_import_uncompressed_oci_layers_and_nested_index(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """Uncompressed layer blobs work, and a nested multi-arch index resolves to linux/amd64."""
    a = layer_a(build)
    digest = build.oci_layout(tmp_path / "oci", [a], compress=False, wrap_in_index=True)
    image = store.import_path("local/multi", tmp_path / "oci")
    assert image.digest == digest
    assert [p.name for p in image.layers] == [diff_hex(a)]


def test_import_docker_media_type_layers(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """Layers typed application/vnd.docker.image.rootfs.diff.tar.gzip unpack like OCI ones."""
    a = layer_a(build)
    build.oci_layout(
        tmp_path / "oci", [a], media_type="application/vnd.docker.image.rootfs.diff.tar.gzip"
    )
    image = store.import_path("local/docker-types", tmp_path / "oci")
    assert (image.layers[0] / "etc" / "os-release").read_bytes() == b"ID=test\n"


def test_tag_selects_among_images_in_one_layout(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """In a layout holding several tagged images, the imported name's tag picks the manifest."""
    layout = tmp_path / "oci"
    d1 = build.oci_layout(layout, [layer_a(build)], tag="v1")
    first = json.loads((layout / "index.json").read_text())["manifests"]
    d2 = build.oci_layout(layout, [layer_b(build)], tag="v2")
    index = json.loads((layout / "index.json").read_text())
    index["manifests"] = first + index["manifests"]
    (layout / "index.json").write_text(json.dumps(index))
    assert store.import_path("app:v2", layout).digest == d2
    assert store.import_path("app:v1", layout).digest == d1


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.gz"])
def test_import_oci_archive(
    store: ImageStore, tmp_path: Path, build: Builders, compress: bool
) -> None:
    """A tar (or tar.gz) of an OCI layout imports like the layout directory."""
    a, b = layer_a(build), layer_b(build)
    digest = build.oci_layout(tmp_path / "oci", [a, b], config=FULL_CONFIG)
    archive = build.archive_dir(tmp_path / "oci", tmp_path / "image.oci.tar", compress=compress)
    image = store.import_path("local/app", archive)
    assert image.digest == digest
    assert image.config.cmd == ["echo hi"]
    assert [p.name for p in image.layers] == [diff_hex(a), diff_hex(b)]


def test_import_docker_save_archive_from_skopeo(
    store: ImageStore,
    tmp_path: Path,
    build: Builders,
    skopeo_copy: Callable[[str, str], None],
    unpack_calls: list[Path],
) -> None:
    """A docker-archive written by skopeo imports, sharing layers with the same OCI image."""
    a, b = layer_a(build), layer_b(build)
    build.oci_layout(tmp_path / "oci", [a, b], config=FULL_CONFIG, tag="v1")
    archive = tmp_path / "docker.tar"
    skopeo_copy(f"oci:{tmp_path / 'oci'}:v1", f"docker-archive:{archive}:local/app:v1")
    image = store.import_path("local/app:v1", archive)
    assert image.config.entrypoint == ["/bin/sh", "-c"]
    assert image.config.working_dir == "/work"
    assert [p.name for p in image.layers] == [diff_hex(a), diff_hex(b)]
    assert (image.layers[1] / "app" / "main").read_bytes() == b"print(1)\n"
    assert image.digest.startswith("sha256:")
    assert len(unpack_calls) == 2
    oci_image = store.import_path("local/app-oci:v1", tmp_path / "oci")
    assert oci_image.layers == image.layers
    assert len(unpack_calls) == 2  # verified against the stored layers, not unpacked again


def test_import_oci_archive_from_skopeo(
    store: ImageStore, tmp_path: Path, build: Builders, skopeo_copy: Callable[[str, str], None]
) -> None:
    """An oci-archive written by skopeo imports with the original manifest digest."""
    a = layer_a(build)
    digest = build.oci_layout(tmp_path / "oci", [a], tag="v1")
    archive = tmp_path / "image.oci.tar"
    skopeo_copy(f"oci:{tmp_path / 'oci'}:v1", f"oci-archive:{archive}:v1")
    image = store.import_path("local/app:v1", archive)
    assert image.digest == digest
    assert (image.layers[0] / "etc" / "os-release").exists()


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.gz"])
def test_import_rootfs_tarball(
    store: ImageStore, tmp_path: Path, build: Builders, busybox_rootfs: Path, compress: bool
) -> None:
    """A plain rootfs tarball becomes a one-layer image with the default PATH."""
    data = build.tar_of_dir(busybox_rootfs)
    tar_path = tmp_path / ("rootfs.tar.gz" if compress else "rootfs.tar")
    tar_path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    image = store.import_path("local/busybox", tar_path)
    assert image.config == ImageConfig(env=[DEFAULT_PATH])
    assert [p.name for p in image.layers] == [diff_hex(data)]
    layer = image.layers[0]
    assert os.readlink(layer / "bin" / "sh") == "busybox"
    assert os.access(layer / "bin" / "busybox", os.X_OK)
    assert stat.S_IMODE(os.lstat(layer / "tmp").st_mode) == 0o1777
    assert image.size == os.path.getsize(busybox_rootfs / "bin" / "busybox") + len(
        (busybox_rootfs / "etc" / "passwd").read_bytes()
    )


def test_import_plain_directory_as_rootfs(
    store: ImageStore, busybox_rootfs: Path, unpack_calls: list[Path]
) -> None:
    """A directory that is not an OCI layout is copied as a root filesystem, runnable busybox."""
    image = store.import_path("local/busybox", busybox_rootfs)
    layer = image.layers[0]
    assert image.config.env == [DEFAULT_PATH]
    assert (layer / "etc" / "passwd").read_text().startswith("root:")
    assert os.readlink(layer / "bin" / "ls") == "busybox"
    out = subprocess.run(
        [str(layer / "bin" / "busybox"), "echo", "hello"], capture_output=True, check=True
    )
    assert out.stdout == b"hello\n"
    # Importing the same directory again yields the same layer (content-addressed).
    again = store.import_path("local/busybox2", busybox_rootfs)
    assert again.layers == image.layers
    assert len(layer_dirs(store)) == 1


def test_busybox_image_runs_from_an_overlay_of_its_layers(
    store: ImageStore,
    tmp_path: Path,
    build: Builders,
    busybox_rootfs: Path,
    overlay_mount: list[Path],
) -> None:
    """Stacked with overlayfs, the layers form a working root: busybox runs in a chroot."""
    base = build.tar_of_dir(busybox_rootfs)
    top = build.tar(
        [build.file("etc/motd", b"hello from the top layer\n"), build.file("etc/.wh.passwd")]
    )
    build.oci_layout(tmp_path / "oci", [base, top], config={"Cmd": ["sh"]})
    image = store.import_path("local/busybox", tmp_path / "oci")
    work, rw, merged = tmp_path / "work", tmp_path / "rw", tmp_path / "merged"
    for d in (work, rw, merged):
        d.mkdir()
    lowers = ":".join(str(p) for p in reversed(image.layers))
    proc = subprocess.run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lowers},upperdir={rw},workdir={work}",
            str(merged),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"overlayfs mount not possible here: {proc.stderr.strip()}")
    overlay_mount.append(merged)
    out = subprocess.run(
        ["chroot", str(merged), "/bin/sh", "-c", "cat /etc/motd; ls /etc"],
        capture_output=True,
        check=True,
        timeout=10,
    )
    assert out.stdout.decode().split() == ["hello", "from", "the", "top", "layer", "motd"]


# -- lookups, listing, removal -----------------------------------------------------------------


def test_get_normalizes_names_and_reports_missing_images(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """get() finds 'local/busybox:latest' as 'local/busybox' or 'Local/BusyBox'; else says how."""
    build.oci_layout(tmp_path / "oci", [layer_a(build)])
    imported = store.import_path("local/busybox", tmp_path / "oci")
    assert imported.name == "local/busybox:latest"
    assert store.get("local/busybox") == imported
    assert store.get("local/busybox:latest") == imported
    assert store.get(" Local/BusyBox ") == imported
    with pytest.raises(ImageNotFoundError, match="hutch image import NAME PATH"):
        store.get("local/busybox:other")
    with pytest.raises(ImageError, match="whitespace"):
        store.get("local/busy box")


def test_list_returns_all_images_sorted(store: ImageStore, tmp_path: Path, build: Builders) -> None:
    """list() returns every image, sorted by name, and survives a new store on the same root."""
    build.oci_layout(tmp_path / "oci", [layer_a(build)])
    for name in ("zeta", "alpha:2", "mid/x"):
        store.import_path(name, tmp_path / "oci")
    assert [i.name for i in store.list()] == ["alpha:2", "mid/x:latest", "zeta:latest"]
    assert ImageStore(store.root).list() == store.list()
    assert ImageStore(tmp_path / "fresh").list() == []


def test_remove_frees_unshared_layers_and_keeps_shared_ones(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """remove() deletes the record and the layers only that image used."""
    a, b, c = layer_a(build), layer_b(build), layer_c(build)
    build.oci_layout(tmp_path / "one", [a, b])
    build.oci_layout(tmp_path / "two", [a, c])
    store.import_path("one", tmp_path / "one")
    store.import_path("two", tmp_path / "two")
    assert layer_dirs(store) == {diff_hex(a), diff_hex(b), diff_hex(c)}
    store.remove("one")
    assert layer_dirs(store) == {diff_hex(a), diff_hex(c)}
    assert [i.name for i in store.list()] == ["two:latest"]
    with pytest.raises(ImageNotFoundError):
        store.get("one")
    with pytest.raises(ImageNotFoundError):
        store.remove("one")
    store.remove("two:latest")
    assert layer_dirs(store) == set()
    assert list((store.root / "layers" / "sha256").iterdir()) == []
    assert list((store.root / "blobmap" / "sha256").iterdir()) == []


def test_reimport_replaces_image_and_frees_old_layers(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """Importing under an existing name replaces it; layers only the old one used are freed."""
    a, b, c = layer_a(build), layer_b(build), layer_c(build)
    build.oci_layout(tmp_path / "v1", [a, b], config={"Cmd": ["old"]})
    build.oci_layout(tmp_path / "v2", [a, c], config={"Cmd": ["new"]})
    store.import_path("app", tmp_path / "v1")
    image = store.import_path("app", tmp_path / "v2")
    assert store.get("app") == image
    assert image.config.cmd == ["new"]
    assert layer_dirs(store) == {diff_hex(a), diff_hex(c)}
    assert len(store.list()) == 1


def test_shared_layer_is_unpacked_once(
    store: ImageStore, tmp_path: Path, build: Builders, unpack_calls: list[Path]
) -> None:
    """A layer already in the store is reused (same inode, mtime), not unpacked again."""
    a, b, c = layer_a(build), layer_b(build), layer_c(build)
    build.oci_layout(tmp_path / "one", [a, b])
    build.oci_layout(tmp_path / "two", [a, c])
    first = store.import_path("one", tmp_path / "one")
    before = os.stat(first.layers[0])
    assert len(unpack_calls) == 2
    second = store.import_path("two", tmp_path / "two")
    assert second.layers[0] == first.layers[0]
    after = os.stat(second.layers[0])
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )
    assert len(unpack_calls) == 3  # only layer c was new


def test_concurrent_imports_share_layers_safely(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """Two threads importing images with a common layer both succeed; the layer exists once."""
    a = layer_a(build)
    for i in range(4):
        build.oci_layout(tmp_path / f"img{i}", [a, build.tar([build.file(f"f{i}", b"x")])])
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            store.import_path(f"img{i}", tmp_path / f"img{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list()) == 4
    assert len(layer_dirs(store)) == 5
    assert list((store.root / "tmp").iterdir()) == []


def test_forty_layer_image(store: ImageStore, tmp_path: Path, build: Builders) -> None:
    """An image with 40+ layers imports, in order, quickly."""
    layers = [
        build.tar([build.file(f"layer{i:02}", str(i).encode()), build.file("top", str(i).encode())])
        for i in range(42)
    ]
    build.oci_layout(tmp_path / "oci", layers)
    start = time.monotonic()
    image = store.import_path("local/tall", tmp_path / "oci")
    assert time.monotonic() - start < 10
    assert len(image.layers) == 42
    assert [p.name for p in image.layers] == [diff_hex(layer) for layer in layers]
    assert (image.layers[-1] / "top").read_bytes() == b"41"
    assert (image.layers[7] / "layer07").read_bytes() == b"7"


def test_empty_layers_are_not_returned_as_lowerdirs(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """Entry-less layers (often repeated, which overlayfs refuses) are left out of Image.layers."""
    a, b, empty = layer_a(build), layer_b(build), build.tar([])
    build.oci_layout(tmp_path / "oci", [a, empty, b, empty])
    image = store.import_path("local/gaps", tmp_path / "oci")
    assert [p.name for p in image.layers] == [diff_hex(a), diff_hex(b)]
    build.oci_layout(tmp_path / "only-empty", [empty, empty])
    only = store.import_path("local/empty", tmp_path / "only-empty")
    assert [p.name for p in only.layers] == [diff_hex(empty)]
    store.remove("local/gaps")
    store.remove("local/empty")
    assert layer_dirs(store) == set()


def test_leftover_temp_dirs_are_cleaned_at_startup(tmp_path: Path) -> None:
    """Scratch directories of an import that crashed are removed when the store opens."""
    root = tmp_path / "store"
    ImageStore(root)
    leftover = root / "tmp" / "import-crashed" / "layer-x" / "tree"
    leftover.mkdir(parents=True)
    (leftover / "half").write_text("partial")
    ImageStore(root)
    assert list((root / "tmp").iterdir()) == []


def test_store_directories_are_private(store: ImageStore) -> None:
    """Store directories are 0700: host users cannot reach setuid binaries inside layers."""
    for sub in ("layers", "layers/sha256", "images", "tmp", "blobmap"):
        assert stat.S_IMODE(os.stat(store.root / sub).st_mode) == 0o700


# -- errors ----------------------------------------------------------------------------------


def assert_store_empty(store: ImageStore) -> None:
    assert store.list() == []
    assert layer_dirs(store) == set()
    assert list((store.root / "tmp").iterdir()) == []


def corrupt_blob(layout: Path, digest: str) -> None:
    blob = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))


def manifest_of(layout: Path) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":", 1)[1]
    result: dict[str, Any] = json.loads((layout / "blobs" / "sha256" / digest).read_bytes())
    return result


def test_layer_digest_mismatch_is_an_import_error(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """A layer blob whose bytes do not match its digest fails the import and leaves nothing."""
    build.oci_layout(tmp_path / "oci", [layer_a(build), layer_b(build)], compress=False)
    corrupt_blob(tmp_path / "oci", manifest_of(tmp_path / "oci")["layers"][1]["digest"])
    with pytest.raises(ImageImportError, match="digest mismatch"):
        store.import_path("bad", tmp_path / "oci")
    assert_store_empty(store)


def test_mismatch_is_caught_even_when_the_layer_is_already_stored(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """Reusing a stored layer still verifies the input's blob, so a forged blob is refused."""
    a = layer_a(build)
    build.oci_layout(tmp_path / "good", [a])
    build.oci_layout(tmp_path / "forged", [a])
    store.import_path("good", tmp_path / "good")
    corrupt_blob(tmp_path / "forged", manifest_of(tmp_path / "forged")["layers"][0]["digest"])
    with pytest.raises(ImageImportError, match="digest mismatch"):
        store.import_path("forged", tmp_path / "forged")
    assert [i.name for i in store.list()] == ["good:latest"]


def test_manifest_and_config_digest_mismatch(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """Tampered manifests and configs are rejected by digest before any layer is unpacked."""
    build.oci_layout(tmp_path / "oci", [layer_a(build)])
    corrupt_blob(tmp_path / "oci", manifest_of(tmp_path / "oci")["config"]["digest"])
    with pytest.raises(ImageImportError, match="image config: digest mismatch"):
        store.import_path("bad", tmp_path / "oci")
    build.oci_layout(tmp_path / "oci2", [layer_a(build)])
    index = json.loads((tmp_path / "oci2" / "index.json").read_text())
    corrupt_blob(tmp_path / "oci2", index["manifests"][0]["digest"])
    with pytest.raises(ImageImportError, match="digest mismatch"):
        store.import_path("bad", tmp_path / "oci2")
    assert_store_empty(store)


def test_diff_id_mismatch_is_an_import_error(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """A config whose rootfs.diff_ids do not match the uncompressed layer is rejected."""
    layout = tmp_path / "oci"
    build.oci_layout(layout, [layer_a(build)])
    manifest = manifest_of(layout)
    config_path = layout / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]
    config = json.loads(config_path.read_bytes())
    config["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    config_bytes = json.dumps(config).encode()
    manifest["config"]["digest"] = build.write_blob(layout, config_bytes)
    manifest["config"]["size"] = len(config_bytes)
    manifest_bytes = json.dumps(manifest).encode()
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["digest"] = build.write_blob(layout, manifest_bytes)
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(ImageImportError, match="diff_id mismatch"):
        store.import_path("bad", layout)
    assert_store_empty(store)


def test_junk_file_is_a_clear_import_error(store: ImageStore, tmp_path: Path) -> None:
    """A file that is no tar at all fails with a message listing the accepted formats."""
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"definitely not an image\n" * 100)
    with pytest.raises(ImageImportError, match="is not a tar archive") as excinfo:
        store.import_path("junk", junk)
    assert "OCI" in str(excinfo.value)
    assert "docker save" in str(excinfo.value)
    with pytest.raises(ImageImportError, match="no such file"):
        store.import_path("junk", tmp_path / "missing.tar")
    gz_junk = tmp_path / "junk.tar.gz"
    gz_junk.write_bytes(gzip.compress(b"still not a tar" * 100))
    with pytest.raises(ImageImportError, match="is not a tar archive"):
        store.import_path("junk", gz_junk)
    assert_store_empty(store)


def test_zstd_is_refused_with_a_clear_message(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """zstd layers (by media type or by magic bytes) and zstd archives say zstd is unsupported."""
    zstd_magic = b"\x28\xb5\x2f\xfd" + b"\x00" * 64
    layout = tmp_path / "by-type"
    build.oci_layout(
        layout, [layer_a(build)], media_type="application/vnd.oci.image.layer.v1.tar+zstd"
    )
    with pytest.raises(ImageImportError, match="zstd"):
        store.import_path("z", layout)
    layout2 = tmp_path / "by-magic"
    build.oci_layout(layout2, [layer_a(build)], compress=False)
    manifest = manifest_of(layout2)
    manifest["layers"][0]["digest"] = build.write_blob(layout2, zstd_magic)
    manifest_bytes = json.dumps(manifest).encode()
    index = json.loads((layout2 / "index.json").read_text())
    index["manifests"][0]["digest"] = build.write_blob(layout2, manifest_bytes)
    (layout2 / "index.json").write_text(json.dumps(index))
    with pytest.raises(ImageImportError, match=r"zstd.*not supported yet"):
        store.import_path("z", layout2)
    archive = tmp_path / "rootfs.tar.zst"
    archive.write_bytes(zstd_magic)
    with pytest.raises(ImageImportError, match="zstd"):
        store.import_path("z", archive)
    assert_store_empty(store)


def test_missing_blob_and_bad_layout_are_import_errors(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """A layout missing a layer blob, or with a broken index.json, fails with ImageImportError."""
    layout = tmp_path / "oci"
    build.oci_layout(layout, [layer_a(build)])
    blob = layout / "blobs" / "sha256" / manifest_of(layout)["layers"][0]["digest"].split(":")[1]
    blob.unlink()
    with pytest.raises(ImageImportError, match="missing"):
        store.import_path("x", layout)
    (layout / "index.json").write_text("{not json")
    with pytest.raises(ImageImportError, match="not valid JSON"):
        store.import_path("x", layout)
    assert_store_empty(store)


def test_invalid_name_is_rejected_before_reading_input(store: ImageStore, tmp_path: Path) -> None:
    """import_path validates the name first (ImageError, not an import attempt)."""
    with pytest.raises(ImageError, match="invalid image name"):
        store.import_path("Bad Name", tmp_path / "whatever")
