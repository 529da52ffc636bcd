"""Crafted layer tars against the extractor, and tall layer stacks in a real sandbox.

Beside the named escape cases of ``test_image_layers.py``, a property test throws random
sequences of hostile entries (``..``, absolute names, symlinked parents, hard links out of the
tree, whiteouts, devices) at the extractor: whatever it decides, nothing outside the layer
directory changes. Then an image of 45 layers, with whiteouts and an opaque directory high in the
stack, is mounted and run by the runc runtime.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hutch.runtime._interface import ExecSpec, RuntimeError_, SandboxSpec
from hutch.runtime.images import Image, ImageImportError, ImageStore, UnsafeLayerError
from hutch.runtime.images._layers import unpack_layer
from hutch.runtime.runc import RuncRuntime
from hutch.runtime.runc._overlay import mount_overlay

if TYPE_CHECKING:
    from conftest import Builders, Member

pytestmark = pytest.mark.root

CANARY = "pwned-canary"

# -- property: nothing escapes -----------------------------------------------------------------

_COMPONENTS = ["a", "b", "..", ".", CANARY, ".wh.a", ".wh..wh..opq", ".wh..", "dev"]


@st.composite
def _names(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(_COMPONENTS), min_size=1, max_size=4))
    lead = draw(st.sampled_from(["", "/", "./", "../"]))
    return lead + "/".join(parts)


def _members(sentinel: Path) -> st.SearchStrategy[list[tuple[str, str, str]]]:
    """(kind, name, target) triples; targets point inside, above, at / and at the sentinel."""
    targets = st.one_of(
        _names(),
        st.sampled_from(["/", "/etc", "/tmp", "../../..", str(sentinel), f"{sentinel}/keep"]),
    )
    entry = st.tuples(
        st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo", "chardev", "blockdev"]),
        _names(),
        targets,
    )
    return st.lists(entry, min_size=1, max_size=8)


def _build(build: Builders, triples: list[tuple[str, str, str]]) -> list[Member]:
    members: list[Member] = []
    for kind, name, target in triples:
        if kind == "file":
            members.append(build.file(name, b"payload"))
        elif kind == "dir":
            members.append(build.dir(name + "/", mode=0o777))
        elif kind == "symlink":
            members.append(build.symlink(name, target))
        elif kind == "hardlink":
            members.append(build.hardlink(name, target))
        elif kind == "fifo":
            members.append(build.fifo(name))
        else:
            info, data = build.chardev(name, 0, 0)
            if kind == "blockdev":
                info.type = b"4"
            members.append((info, data))
    return members


def _tree(root: Path) -> dict[str, tuple[int, int, bytes | str | None]]:
    """Everything below ``root``: mode, link count and content (or link target)."""
    out: dict[str, tuple[int, int, bytes | str | None]] = {}
    for path in [root, *root.rglob("*")]:
        st_ = os.lstat(path)
        if stat.S_ISLNK(st_.st_mode):
            content: bytes | str | None = os.readlink(path)
        elif stat.S_ISREG(st_.st_mode):
            content = path.read_bytes()
        else:
            content = None
        out[str(path.relative_to(root))] = (st_.st_mode, st_.st_nlink, content)
    return out


def _assert_no_canary_outside(workdir: Path) -> None:
    for place in (Path("/"), Path("/etc"), Path("/tmp"), workdir, workdir.parent):
        assert not (place / CANARY).exists(), f"{place / CANARY} was created"


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_hostile_layers_never_touch_anything_outside(
    build: Builders, data: st.DataObject
) -> None:
    """Random mixes of escape attempts: each layer is unpacked or refused with an
    ImageImportError; the canary directory beside it and the host stay as they were."""
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        workdir = Path(tmp)
        sentinel = workdir / "sentinel"
        sentinel.mkdir()
        (sentinel / "keep").write_text("original")
        before = _tree(sentinel)
        triples = data.draw(_members(sentinel))
        tar = build.tar(_build(build, triples))
        dest = workdir / "layer"
        try:
            unpack_layer(io.BytesIO(tar), dest)
        except UnsafeLayerError as exc:
            assert "layer entry" in str(exc)
            assert not dest.exists()
        except ImageImportError as exc:
            assert str(exc)
            assert not dest.exists()
        assert _tree(sentinel) == before
        assert os.listxattr(sentinel) == []
        assert sorted(p.name for p in workdir.iterdir()) in (["sentinel"], ["layer", "sentinel"])
        _assert_no_canary_outside(workdir)
        if dest.exists():
            # Devices never appear, except the 0/0 whiteouts made from .wh. entries.
            for path in [dest, *dest.rglob("*")]:
                mode = os.lstat(path).st_mode
                assert not stat.S_ISBLK(mode)
                if stat.S_ISCHR(mode):
                    assert os.lstat(path).st_rdev == os.makedev(0, 0)


# -- named cases the property test does not pin down -------------------------------------------


def test_absolute_names_and_link_targets_stay_inside(tmp_path: Path, build: Builders) -> None:
    """'/etc/x' lands at <layer>/etc/x; an absolute hard-link target means the layer's own file;
    an absolute symlink is stored as text (it resolves inside the sandbox, never here)."""
    dest = tmp_path / "layer"
    unpack_layer(
        io.BytesIO(
            build.tar(
                [
                    build.file(f"/etc/{CANARY}", b"inside"),
                    build.dir("/abs/dir/"),
                    build.hardlink("/abs/link", f"/etc/{CANARY}"),
                    build.symlink("/abs/sym", f"/etc/{CANARY}"),
                ]
            )
        ),
        dest,
    )
    assert (dest / "etc" / CANARY).read_bytes() == b"inside"
    assert os.lstat(dest / "abs" / "link").st_ino == os.lstat(dest / "etc" / CANARY).st_ino
    assert os.readlink(dest / "abs" / "sym") == f"/etc/{CANARY}"
    assert (dest / "abs" / "dir").is_dir()
    _assert_no_canary_outside(tmp_path)


def test_raw_whiteout_devices_and_block_devices_are_skipped(
    tmp_path: Path, build: Builders
) -> None:
    """A 0/0 character device in a tar (an overlayfs whiteout in disguise), a disk and a tty are
    all left out; only .wh. entries make whiteouts."""
    disk, _ = build.chardev("dev/sda", 8, 0)
    disk.type = b"4"
    dest = tmp_path / "layer"
    unpack_layer(
        io.BytesIO(
            build.tar(
                [
                    build.file("etc/passwd", b"root"),
                    build.chardev("etc/hidden", 0, 0),
                    (disk, None),
                    build.chardev("dev/tty1", 4, 1),
                ]
            )
        ),
        dest,
    )
    assert sorted(p.name for p in (dest / "etc").iterdir()) == ["passwd"]
    assert not (dest / "dev").exists()


def test_over_long_component_is_a_clear_error(tmp_path: Path, build: Builders) -> None:
    """A 300-byte file name (longer than any Linux file system allows) fails naming the entry,
    and leaves no directory."""
    name = "d/" + "x" * 300
    with pytest.raises(ImageImportError, match="could not unpack layer entry") as info:
        unpack_layer(io.BytesIO(build.tar([build.file(name, b"1")])), tmp_path / "layer")
    assert "x" * 300 in str(info.value)
    assert not (tmp_path / "layer").exists()


# -- a tall stack in a real sandbox -------------------------------------------------------------

LAYERS = 45


def tall_image(store: ImageStore, tmp_path: Path, build: Builders, busybox_tar: Path) -> Image:
    """busybox at the bottom, then 44 layers: each adds /layers/NN and rewrites /top; layer 30
    whites out /layers/05; layer 40 makes /opq opaque (hiding what layer 10 put there)."""
    layers = [busybox_tar.read_bytes()]
    for i in range(1, LAYERS):
        members = [
            build.file(f"layers/{i:02}", str(i).encode()),
            build.file("top", str(i).encode()),
        ]
        if i == 10:
            members += [build.dir("opq/"), build.file("opq/old", b"old")]
        if i == 30:
            members.append(build.file("layers/.wh.05"))
        if i == 40:
            members += [build.dir("opq/"), build.file("opq/.wh..wh..opq"), build.file("opq/new")]
        layers.append(build.tar(members))
    build.oci_layout(tmp_path / "tall", layers, config={"Env": ["PATH=/bin"]})
    return store.import_path("local/tall:1", tmp_path / "tall")


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[RuncRuntime]:
    rt = RuncRuntime(tmp_path / "data")
    try:
        yield rt
    finally:
        for sandbox_id in await rt.list_ids():
            await rt.delete(sandbox_id)
        await rt.aclose()


@pytest.mark.asyncio(loop_scope="session")
async def test_forty_five_layers_mount_and_run(
    store: ImageStore, tmp_path: Path, build: Builders, busybox_tar: Path, runtime: RuncRuntime
) -> None:
    """A 45-layer image (more than one page of lowerdir= paths) mounts and runs; the top layer
    wins, the whiteout and the opaque directory hide what they should."""
    image = tall_image(store, tmp_path, build, busybox_tar)
    assert len(image.layers) == LAYERS
    assert len(":".join(str(p) for p in image.layers)) > 4096
    spec = SandboxSpec(id=uuid.uuid4().hex, hostname="tall", image=image)
    await runtime.create(spec)
    script = "cat /top; echo; ls /layers | wc -l; ls /opq; test -e /layers/05 || echo gone"
    proc = await runtime.exec(spec.id, ExecSpec(argv=["/bin/sh", "-c", script]))
    try:
        out = await proc.stdout.read()
        assert await proc.wait() == 0
    finally:
        await proc.close()
    assert out.decode().split() == [str(LAYERS - 1), str(LAYERS - 2), "new", "gone"]


def test_classic_mount_fallback_works_and_refuses_too_many_layers_clearly(
    store: ImageStore, tmp_path: Path, build: Builders, busybox_tar: Path
) -> None:
    """Kernels without lowerdir+ get mount(2): fine for a few layers, and a message saying what
    to do when the options do not fit in a page."""
    image = tall_image(store, tmp_path, build, busybox_tar)
    layers = [str(p) for p in reversed(image.layers)]
    merged, upper, work = tmp_path / "m", tmp_path / "u", tmp_path / "w"
    for d in (merged, upper, work):
        d.mkdir()
    with pytest.raises(RuntimeError_, match=r"too many layers .*Linux 6\.8"):
        mount_overlay(str(merged), layers, str(upper), str(work), legacy=True)
    mount_overlay(str(merged), layers[:3], str(upper), str(work), legacy=True)
    try:
        assert (merged / "top").read_bytes() == str(LAYERS - 1).encode()
        assert (merged / "bin" / "busybox").exists() is False  # bottom layer not in this stack
    finally:
        import subprocess

        subprocess.run(["umount", str(merged)], check=True)
