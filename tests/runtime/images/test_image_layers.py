"""Layer extraction: faithful unpacking, whiteouts, and refusal of hostile layers."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hutch.runtime.images import ImageImportError, ImageStore, UnsafeLayerError
from hutch.runtime.images._layers import unpack_layer

if TYPE_CHECKING:
    from conftest import Builders, Member

pytestmark = pytest.mark.root

ESCAPE_NAMES = {"evil", "pwned", "x", "outside", "escaped"}


def unpack(tmp_path: Path, build: Builders, members: list[Member]) -> Path:
    dest = tmp_path / "layer"
    unpack_layer(io.BytesIO(build.tar(members)), dest)
    return dest


def lstat(path: Path) -> os.stat_result:
    return os.lstat(path)


# -- faithful unpacking ------------------------------------------------------------------------


def test_unpack_keeps_owner_mode_setuid_and_mtime(tmp_path: Path, build: Builders) -> None:
    """Files keep the tar's uid/gid, mode incl. setuid/setgid/sticky, and mtime (no id shift)."""
    layer = unpack(
        tmp_path,
        build,
        [
            build.dir("usr/", uid=0, gid=0, mode=0o755),
            build.file("usr/suid", b"#!", mode=0o4755, uid=0, gid=0),
            build.file("usr/sgid", b"x", mode=0o2711, uid=1000, gid=50),
            build.dir("home/u/", mode=0o1750, uid=100000, gid=100000),
            build.file("home/u/own", b"y", mode=0o600, uid=100000, gid=100001),
        ],
    )
    suid = lstat(layer / "usr" / "suid")
    assert stat.S_IMODE(suid.st_mode) == 0o4755
    assert (suid.st_uid, suid.st_gid) == (0, 0)
    sgid = lstat(layer / "usr" / "sgid")
    assert stat.S_IMODE(sgid.st_mode) == 0o2711
    assert (sgid.st_uid, sgid.st_gid) == (1000, 50)
    home = lstat(layer / "home" / "u")
    assert stat.S_IMODE(home.st_mode) == 0o1750
    assert (home.st_uid, home.st_gid) == (100000, 100000)
    own = lstat(layer / "home" / "u" / "own")
    assert (own.st_uid, own.st_gid) == (100000, 100001)
    assert own.st_mtime == 1_600_000_000
    assert home.st_mtime == 1_600_000_000


def test_read_only_directory_is_filled_before_its_mode_applies(
    tmp_path: Path, build: Builders
) -> None:
    """A 0555 directory entry does not block later entries; its mode and mtime apply at the end."""
    layer = unpack(
        tmp_path,
        build,
        [build.dir("ro/", mode=0o555), build.file("ro/a", b"1"), build.dir("ro/sub/", mode=0o500)],
    )
    assert (layer / "ro" / "a").read_bytes() == b"1"
    assert stat.S_IMODE(lstat(layer / "ro").st_mode) == 0o555
    assert stat.S_IMODE(lstat(layer / "ro" / "sub").st_mode) == 0o500
    assert lstat(layer / "ro").st_mtime == 1_600_000_000


def test_implicit_parents_and_root_defaults(tmp_path: Path, build: Builders) -> None:
    """Missing parents are created 0755, the layer root is 0755 unless the tar sets './'."""
    layer = unpack(tmp_path, build, [build.file("deep/er/file", b"z")])
    assert stat.S_IMODE(lstat(layer).st_mode) == 0o755
    assert stat.S_IMODE(lstat(layer / "deep" / "er").st_mode) == 0o755
    layer2 = tmp_path / "layer2"
    unpack_layer(io.BytesIO(build.tar([build.dir("./", mode=0o700, uid=7)])), layer2)
    assert stat.S_IMODE(lstat(layer2).st_mode) == 0o700
    assert lstat(layer2).st_uid == 7


def test_symlinks_hardlinks_fifos_kept_and_devices_skipped(tmp_path: Path, build: Builders) -> None:
    """Symlinks keep their text, hard links share an inode, FIFOs exist, devices are dropped."""
    layer = unpack(
        tmp_path,
        build,
        [
            build.file("bin/busybox", b"ELF", mode=0o755),
            build.symlink("bin/sh", "busybox"),
            build.symlink("etc/abs", "/etc/passwd"),
            build.symlink("up", "../../../.."),
            build.hardlink("bin/ls", "bin/busybox"),
            build.hardlink("/bin/cat", "./bin/busybox"),
            build.fifo("run/fifo"),
            build.chardev("dev/kmsg", 1, 11),
            build.chardev("dev/null", 1, 3),
        ],
    )
    assert os.readlink(layer / "bin" / "sh") == "busybox"
    assert os.readlink(layer / "etc" / "abs") == "/etc/passwd"
    assert os.readlink(layer / "up") == "../../../.."
    busybox = lstat(layer / "bin" / "busybox")
    assert lstat(layer / "bin" / "ls").st_ino == busybox.st_ino
    assert lstat(layer / "bin" / "cat").st_ino == busybox.st_ino
    assert busybox.st_nlink == 3
    assert stat.S_ISFIFO(lstat(layer / "run" / "fifo").st_mode)
    assert stat.S_IMODE(lstat(layer / "run" / "fifo").st_mode) == 0o640
    assert not (layer / "dev" / "kmsg").exists()
    assert not (layer / "dev" / "null").exists()


def test_later_entries_replace_earlier_ones(tmp_path: Path, build: Builders) -> None:
    """A later entry replaces a file, a directory tree or a symlink at the same path."""
    layer = unpack(
        tmp_path,
        build,
        [
            build.file("f", b"old"),
            build.file("f", b"new"),
            build.dir("d/"),
            build.file("d/inner", b"1"),
            build.file("d", b"now a file"),
            build.file("e", b"was a file"),
            build.dir("e/", mode=0o711),
            build.file("e/x", b"2"),
            build.symlink("s", "/etc"),
            build.dir("s/"),
            build.file("s/in", b"3"),
        ],
    )
    assert (layer / "f").read_bytes() == b"new"
    assert (layer / "d").read_bytes() == b"now a file"
    assert stat.S_IMODE(lstat(layer / "e").st_mode) == 0o711
    assert (layer / "e" / "x").read_bytes() == b"2"
    assert stat.S_ISDIR(lstat(layer / "s").st_mode)
    assert (layer / "s" / "in").read_bytes() == b"3"
    assert not Path("/etc/in").exists()


def test_long_names_work(tmp_path: Path, build: Builders) -> None:
    """A 200-character component and a 600-character path (PAX long names) unpack correctly."""
    long_component = "n" * 200
    long_path = "/".join(["d" * 100] * 5) + "/" + "f" * 99
    layer = unpack(
        tmp_path,
        build,
        [
            build.file(long_component, b"a"),
            build.file(long_path, b"b"),
            build.symlink("l" * 150, "t" * 180),
            build.hardlink("h" * 180, long_path),
        ],
    )
    assert (layer / long_component).read_bytes() == b"a"
    assert (layer / long_path).read_bytes() == b"b"
    assert os.readlink(layer / ("l" * 150)) == "t" * 180
    assert (layer / ("h" * 180)).read_bytes() == b"b"


def test_only_safe_xattrs_are_copied(tmp_path: Path, build: Builders) -> None:
    """user.* xattrs are kept; trusted.overlay.* from the tar is dropped (no forged whiteouts)."""
    info, data = build.file("f", b"x")
    info.pax_headers = {
        "SCHILY.xattr.user.note": "hello",
        "SCHILY.xattr.trusted.overlay.opaque": "y",
    }
    layer = unpack(tmp_path, build, [(info, data)])
    assert os.getxattr(layer / "f", "user.note") == b"hello"
    assert "trusted.overlay.opaque" not in os.listxattr(layer / "f")


def test_large_member_is_streamed(tmp_path: Path, build: Builders) -> None:
    """A multi-megabyte member is written completely (copied in chunks, not read whole)."""
    payload = os.urandom(3 << 20)
    layer = unpack(tmp_path, build, [build.file("big", payload)])
    assert (layer / "big").read_bytes() == payload


def test_unpack_reports_digests_and_size(tmp_path: Path, build: Builders) -> None:
    """The raw digest covers the bytes given, diff_id the uncompressed tar, size the file data."""
    import gzip
    import hashlib

    raw_tar = build.tar([build.file("a", b"12345"), build.file("b", b"678")])
    compressed = gzip.compress(raw_tar, mtime=0)
    result = unpack_layer(io.BytesIO(compressed), tmp_path / "layer")
    assert result.digest == "sha256:" + hashlib.sha256(compressed).hexdigest()
    assert result.diff_id == "sha256:" + hashlib.sha256(raw_tar).hexdigest()
    assert result.tar_size == len(raw_tar)
    assert result.size == 8


# -- whiteouts -------------------------------------------------------------------------------


def whiteout_image(store: ImageStore, tmp_path: Path, build: Builders) -> tuple[Path, Path]:
    lower = build.tar(
        [
            build.dir("a/"),
            build.file("a/f", b"lower f"),
            build.file("a/g", b"lower g"),
            build.dir("b/"),
            build.file("b/x", b"lower x"),
        ]
    )
    upper = build.tar(
        [
            build.file("a/.wh.f"),
            build.dir("b/"),
            build.file("b/.wh..wh..opq"),
            build.file("b/y", b"upper y"),
            build.file("c/.wh..wh.plnk"),
        ]
    )
    build.oci_layout(tmp_path / "oci", [lower, upper])
    image = store.import_path("local/whiteouts", tmp_path / "oci")
    return image.layers[0], image.layers[1]


def test_oci_whiteouts_become_overlayfs_whiteouts(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """.wh.NAME becomes a 0/0 char device, .wh..wh..opq the opaque xattr; no .wh. files stay."""
    lower, upper = whiteout_image(store, tmp_path, build)
    st = lstat(upper / "a" / "f")
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(upper / "b", "trusted.overlay.opaque") == b"y"
    assert (upper / "b" / "y").read_bytes() == b"upper y"
    leftovers = [p for p in upper.rglob("*") if p.name.startswith(".wh.")]
    assert leftovers == []
    assert (lower / "a" / "f").read_bytes() == b"lower f"


def test_whiteouts_hide_lower_files_in_an_overlay_mount(
    store: ImageStore, tmp_path: Path, build: Builders, overlay_mount: list[Path]
) -> None:
    """Mounted with overlayfs, the whited-out file and the opaque dir's old content are gone."""
    lower, upper = whiteout_image(store, tmp_path, build)
    work, rw, merged = tmp_path / "work", tmp_path / "rw", tmp_path / "merged"
    for d in (work, rw, merged):
        d.mkdir()
    options = f"lowerdir={upper}:{lower},upperdir={rw},workdir={work}"
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(merged)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"overlayfs mount not possible here: {proc.stderr.strip()}")
    overlay_mount.append(merged)
    assert not (merged / "a" / "f").exists()
    assert (merged / "a" / "g").read_bytes() == b"lower g"
    assert not (merged / "b" / "x").exists()
    assert (merged / "b" / "y").read_bytes() == b"upper y"


# -- hostile layers --------------------------------------------------------------------------


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    """A directory beside the store that no layer may touch."""
    path = tmp_path / "sentinel"
    path.mkdir()
    (path / "keep").write_text("original")
    return path


def _host_view() -> dict[Path, tuple[int, int] | None]:
    """Inode and mtime of each host path an escape would make (None: absent). Compared before
    and after a test rather than required absent: a machine may hold an unrelated ``/tmp/x``,
    and what matters is that the layer neither made nor changed one."""
    view: dict[Path, tuple[int, int] | None] = {}
    for name in ESCAPE_NAMES:
        for root in ("/etc", "/", "/tmp"):
            path = Path(root, name)
            try:
                st = path.lstat()
            except FileNotFoundError:
                view[path] = None
            else:
                view[path] = (st.st_ino, st.st_mtime_ns)
    return view


_HOST_BEFORE: dict[Path, tuple[int, int] | None] = {}


@pytest.fixture(autouse=True)
def _host_before() -> None:
    _HOST_BEFORE.clear()
    _HOST_BEFORE.update(_host_view())


def assert_nothing_escaped(tmp_path: Path, sentinel: Path, store: ImageStore) -> None:
    assert sorted(p.name for p in sentinel.iterdir()) == ["keep"]
    assert (sentinel / "keep").read_text() == "original"
    assert "trusted.overlay.opaque" not in os.listxattr(sentinel)
    assert _host_view() == _HOST_BEFORE
    # Whatever is left under tmp_path (the store is emptied on failure) must not be an escape.
    for path in tmp_path.rglob("*"):
        if store.root in path.parents:
            continue
        assert path.name not in ESCAPE_NAMES, f"{path} escaped the layer"


def assert_store_empty(store: ImageStore) -> None:
    assert list((store.root / "tmp").iterdir()) == []
    assert list((store.root / "layers" / "sha256").iterdir()) == []
    assert list((store.root / "images").iterdir()) == []


def hostile_cases(build: Builders, sentinel: Path) -> list[tuple[str, list[Member], str]]:
    deep = "../" * 12
    return [
        ("dotdot", [build.file("../../etc/evil", b"!")], "../../etc/evil"),
        ("deep-dotdot", [build.file(f"{deep}etc/evil", b"!")], "etc/evil"),
        ("inner-dotdot", [build.dir("a/"), build.file("a/../../x", b"!")], "a/../../x"),
        (
            "symlink-root-parent",
            [build.symlink("evil", "/"), build.file("evil/etc/pwned", b"!")],
            "evil/etc/pwned",
        ),
        (
            "symlink-up-parent",
            [build.symlink("evil", "../../../../../../.."), build.file("evil/tmp/pwned", b"!")],
            "evil/tmp/pwned",
        ),
        (
            "symlink-to-sentinel-parent",
            [build.symlink("d", str(sentinel)), build.file("d/pwned", b"!")],
            "d/pwned",
        ),
        (
            "symlink-nested-parent",
            [build.dir("a/"), build.symlink("a/b", str(sentinel)), build.dir("a/b/pwned/")],
            "a/b/pwned",
        ),
        (
            "symlink-parent-of-hardlink",
            [build.file("t", b"t"), build.symlink("d", str(sentinel)), build.hardlink("d/x", "t")],
            "d/x",
        ),
        (
            "symlink-parent-of-symlink",
            [build.symlink("d", str(sentinel)), build.symlink("d/evil", "/")],
            "d/evil",
        ),
        (
            "symlink-parent-of-whiteout",
            [build.symlink("d", str(sentinel)), build.file("d/.wh.keep")],
            "d/.wh.keep",
        ),
        (
            "symlink-parent-of-opaque",
            [build.symlink("d", str(sentinel)), build.file("d/.wh..wh..opq")],
            "d/.wh..wh..opq",
        ),
        ("hardlink-absolute", [build.hardlink("evil", "/etc/passwd")], "/etc/passwd"),
        ("hardlink-outside", [build.hardlink("evil", "../outside")], "../outside"),
        (
            "hardlink-through-symlink",
            [build.symlink("s", str(sentinel)), build.hardlink("evil", "s/keep")],
            "s/keep",
        ),
        ("whiteout-dotdot", [build.file("a/.wh..")], "a/.wh.."),
        ("file-is-root", [build.file("./", b"!")], "./"),
        ("dotdot-whiteout", [build.file("../.wh.x")], "../.wh.x"),
    ]


HOSTILE_LABELS = [
    "dotdot",
    "deep-dotdot",
    "inner-dotdot",
    "symlink-root-parent",
    "symlink-up-parent",
    "symlink-to-sentinel-parent",
    "symlink-nested-parent",
    "symlink-parent-of-hardlink",
    "symlink-parent-of-symlink",
    "symlink-parent-of-whiteout",
    "symlink-parent-of-opaque",
    "hardlink-absolute",
    "hardlink-outside",
    "hardlink-through-symlink",
    "whiteout-dotdot",
    "file-is-root",
    "dotdot-whiteout",
]


@pytest.mark.parametrize("label", HOSTILE_LABELS)
def test_hostile_layer_is_rejected_without_side_effects(
    label: str, store: ImageStore, tmp_path: Path, build: Builders, sentinel: Path
) -> None:
    """Each escape attempt raises UnsafeLayerError naming the entry; nothing lands outside and
    no half layer, image or temp dir is left in the store."""
    cases = {name: (members, entry) for name, members, entry in hostile_cases(build, sentinel)}
    assert sorted(cases) == sorted(HOSTILE_LABELS)
    members, entry = cases[label]
    tar_path = tmp_path / f"{label}.tar"
    tar_path.write_bytes(build.tar([build.file("ok", b"fine"), *members]))
    with pytest.raises(UnsafeLayerError) as excinfo:
        store.import_path("local/hostile", tar_path)
    assert entry in str(excinfo.value), (label, str(excinfo.value))
    assert_nothing_escaped(tmp_path, sentinel, store)
    assert_store_empty(store)


def test_hostile_layer_in_oci_image_frees_layers_unpacked_before_it(
    store: ImageStore, tmp_path: Path, build: Builders, sentinel: Path
) -> None:
    """A bad upper layer aborts the import and frees the good lower layer it had unpacked."""
    good = build.tar([build.file("bin/ok", b"ok")])
    bad = build.tar([build.symlink("evil", "/"), build.file("evil/etc/pwned", b"!")])
    build.oci_layout(tmp_path / "oci", [good, bad])
    with pytest.raises(UnsafeLayerError, match="evil/etc/pwned"):
        store.import_path("local/hostile", tmp_path / "oci")
    assert_nothing_escaped(tmp_path, sentinel, store)
    assert_store_empty(store)


def test_replacing_symlinks_never_writes_through_them(
    store: ImageStore, tmp_path: Path, build: Builders, sentinel: Path
) -> None:
    """Files, dirs and whiteouts replacing symlinks to the outside replace the link itself."""
    members = [
        build.symlink("f", str(sentinel / "keep")),
        build.file("f", b"overwritten?"),
        build.symlink("d", str(sentinel)),
        build.dir("d/", mode=0o700),
        build.symlink("w", str(sentinel / "keep")),
        build.file(".wh.w"),
        build.symlink("s", str(sentinel / "keep")),
        build.hardlink("h", "s"),
    ]
    tar_path = tmp_path / "replace.tar"
    tar_path.write_bytes(build.tar(members))
    image = store.import_path("local/replace", tar_path)
    layer = image.layers[0]
    assert (layer / "f").read_bytes() == b"overwritten?"
    assert stat.S_ISDIR(lstat(layer / "d").st_mode)
    assert stat.S_ISCHR(lstat(layer / "w").st_mode)
    # The hard link is a second name for the symlink, not for the file it points to.
    assert stat.S_ISLNK(lstat(layer / "h").st_mode)
    assert lstat(sentinel / "keep").st_nlink == 1
    assert stat.S_IMODE(lstat(sentinel).st_mode) == 0o755
    assert sorted(p.name for p in sentinel.iterdir()) == ["keep"]
    assert (sentinel / "keep").read_text() == "original"


def test_device_nodes_are_skipped_not_fatal(
    store: ImageStore, tmp_path: Path, build: Builders
) -> None:
    """Character/block devices (dev/kmsg, a disk) are silently left out of the layer."""
    tar_path = tmp_path / "dev.tar"
    info, _ = build.chardev("dev/sda", 8, 0)
    info.type = b"4"  # block device
    tar_path.write_bytes(
        build.tar(
            [build.chardev("dev/kmsg", 1, 11), (info, None), build.hardlink("dev/k2", "dev/kmsg")]
        )
    )
    image = store.import_path("local/dev", tar_path)
    assert not (image.layers[0] / "dev").exists()


def test_whiteout_marker_of_any_type_is_not_written(tmp_path: Path, build: Builders) -> None:
    """A .wh. name is a whiteout even as a directory entry; no .wh. path is ever created."""
    layer = unpack(
        tmp_path,
        build,
        [build.dir("a/.wh.gone/"), build.symlink("a/.wh.link", "/"), build.dir("b/.wh..wh..opq/")],
    )
    assert sorted(p.name for p in (layer / "a").iterdir()) == ["gone", "link"]
    assert stat.S_ISCHR(lstat(layer / "a" / "gone").st_mode)
    assert stat.S_ISCHR(lstat(layer / "a" / "link").st_mode)
    assert os.getxattr(layer / "b", "trusted.overlay.opaque") == b"y"
    assert list((layer / "b").iterdir()) == []


def test_nul_bytes_in_names_are_rejected(tmp_path: Path, build: Builders) -> None:
    """A PAX name or link target with a NUL byte is refused as unsafe, not a crash."""
    info, data = build.file("ok")
    info.pax_headers = {"path": "a\0b"}
    with pytest.raises(UnsafeLayerError, match="NUL"):
        unpack_layer(io.BytesIO(build.tar([(info, data)])), tmp_path / "l1")
    assert not (tmp_path / "l1").exists()


def test_unsupported_entry_types_are_rejected(tmp_path: Path, build: Builders) -> None:
    """Tar entry types other than files, dirs, links, FIFOs and devices are refused."""
    info, _ = build.file("odd")
    info.type = b"V"  # GNU volume header
    with pytest.raises(UnsafeLayerError, match="unsupported tar type"):
        unpack_layer(io.BytesIO(build.tar([(info, b"")])), tmp_path / "layer")
    assert not (tmp_path / "layer").exists()


def test_truncated_and_non_tar_layers_are_import_errors(tmp_path: Path, build: Builders) -> None:
    """Garbage or a truncated gzip layer raises ImageImportError and leaves no directory."""
    import gzip

    with pytest.raises(ImageImportError, match="not a valid tar"):
        unpack_layer(io.BytesIO(b"this is not a tar file" * 40), tmp_path / "l1")
    truncated = gzip.compress(build.tar([build.file("a", os.urandom(50_000))]))[:-2000]
    with pytest.raises(ImageImportError):
        unpack_layer(io.BytesIO(truncated), tmp_path / "l2")
    assert not (tmp_path / "l1").exists()
    assert not (tmp_path / "l2").exists()
