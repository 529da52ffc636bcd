"""Pulling from a real local registry (docker-registry) with skopeo: tags, digests, multi-arch
indexes, credentials, short names, one pull per image, clear failures, and layer GC."""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from hutch.runtime.images import (
    Credentials,
    ImageError,
    ImagePuller,
    ImagePullError,
    ImageStore,
    RegistryConfig,
)
from hutch.runtime.images._layouts import host_arch
from hutch.runtime.runc._overlay import mount_overlay
from tests.conftest import HUTCH
from tests.registry import PASSWORD, USER, Registry, auth_file, multi_arch_layout

pytestmark = [pytest.mark.root, pytest.mark.asyncio(loop_scope="session")]


@dataclass
class Pushed:
    busybox: str  # "<host>/library/busybox:1"
    busybox_digest: str
    multi: str  # "<host>/library/multi:1", an index of amd64 and arm64
    multi_digests: dict[str, str]  # arch -> manifest digest


@pytest.fixture(scope="module")
def pushed(
    registry: Registry, busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory
) -> Pushed:
    digest = registry.push(f"tarball:{busybox_tar}", "library/busybox:1")
    registry.push(f"tarball:{busybox_tar}", "busybox:1")  # for a non-Docker-Hub default registry
    layout = tmp_path_factory.mktemp("multi") / "layout"
    digests = multi_arch_layout(layout, busybox_tar, ("amd64", "arm64"))
    registry.push(f"oci:{layout}:multi", "library/multi:1", all_platforms=True)
    return Pushed(
        f"{registry.host}/library/busybox:1", digest, f"{registry.host}/library/multi:1", digests
    )


def puller(tmp_path: Path, *hosts: str, **kw: object) -> ImagePuller:
    store = ImageStore(tmp_path / "store")
    return ImagePuller(store, RegistryConfig(insecure_registries=hosts, **kw))  # type: ignore[arg-type]


async def test_pull_by_tag_reports_progress(
    tmp_path: Path, registry: Registry, pushed: Pushed
) -> None:
    """A tag pulls into the store under its qualified name, digest as pushed, with progress."""
    messages: list[str] = []
    image = await puller(tmp_path, registry.host).resolve(pushed.busybox, progress=messages.append)
    assert image.name == pushed.busybox
    assert image.digest == pushed.busybox_digest
    assert (image.layers[0] / "bin" / "busybox").is_file()
    assert messages[0] == f"Pulling {pushed.busybox}"
    assert f"Unpacking {pushed.busybox}: layer 1 of 1" in messages


async def test_pull_by_digest(tmp_path: Path, registry: Registry, pushed: Pushed) -> None:
    """name@sha256:... pulls exactly that manifest (a tag beside the digest is ignored)."""
    by_digest = f"{registry.host}/library/busybox@{pushed.busybox_digest}"
    image = await puller(tmp_path, registry.host).resolve(by_digest)
    assert image.digest == pushed.busybox_digest
    assert image.name == by_digest
    both = f"{registry.host}/library/busybox:nosuchtag@{pushed.busybox_digest}"
    assert (await puller(tmp_path, registry.host).resolve(both)).digest == pushed.busybox_digest


async def test_multi_arch_index_picks_the_host_platform(
    tmp_path: Path, registry: Registry, pushed: Pushed
) -> None:
    """From an index of amd64 and arm64 images the host's architecture is pulled, by tag or by
    the index digest."""
    arch = host_arch()
    p = puller(tmp_path, registry.host)
    image = await p.resolve(pushed.multi)
    assert image.digest == pushed.multi_digests[arch]
    assert (image.layers[-1] / "arch").read_text() == arch
    index_digest = registry.skopeo(
        "inspect", "--tls-verify=false", "--raw", f"docker://{pushed.multi}"
    )
    import hashlib

    digest = "sha256:" + hashlib.sha256(index_digest.encode()).hexdigest()
    by_index = await p.resolve(f"{registry.host}/library/multi@{digest}")
    assert by_index.digest == pushed.multi_digests[arch]


async def test_short_names_use_the_default_registry_after_the_local_store(
    tmp_path: Path, registry: Registry, pushed: Pushed, busybox_tar: Path
) -> None:
    """'busybox:1' means <default registry>/busybox:1; a stored image of either name wins."""
    p = puller(tmp_path, registry.host, default_registry=registry.host)
    assert p.qualify("busybox:1") == f"{registry.host}/busybox:1"
    before = registry.manifest_requests("busybox")
    pulled = await p.resolve("busybox:1")
    assert pulled.name == f"{registry.host}/busybox:1"
    assert registry.manifest_requests("busybox") > before
    # Now stored under the qualified name: found without asking the registry again.
    count = registry.manifest_requests("busybox")
    assert (await p.resolve("busybox:1")).digest == pulled.digest
    # A local image of the short name itself comes first.
    p.store.import_path("other:2", busybox_tar)
    assert (await p.resolve("other:2")).name == "other:2"
    assert registry.manifest_requests("busybox") == count
    assert registry.manifest_requests("other") == 0


async def test_concurrent_requests_share_one_pull(
    tmp_path: Path, registry: Registry, busybox_tar: Path
) -> None:
    """Five sandboxes wanting the same missing image cause one skopeo copy, not five."""
    registry.push(f"tarball:{busybox_tar}", "library/single:1")
    registry.push(f"tarball:{busybox_tar}", "library/dedupe:1")
    await puller(tmp_path / "a", registry.host).resolve(f"{registry.host}/library/single:1")
    per_pull = registry.manifest_requests("library/single")
    p = puller(tmp_path / "b", registry.host)
    images = await asyncio.gather(
        *(p.resolve(f"{registry.host}/library/dedupe:1") for _ in range(5))
    )
    assert len({image.digest for image in images}) == 1
    assert registry.manifest_requests("library/dedupe") == per_pull


async def test_credentials(tmp_path: Path, auth_registry: Registry, busybox_tar: Path) -> None:
    """An auth registry: refused without or with wrong credentials (saying which), pulled with
    per-pull credentials or with the server's auth file."""
    name = f"{auth_registry.host}/team/private:1"
    auth_registry.push(f"tarball:{busybox_tar}", "team/private:1")
    p = puller(tmp_path / "none", auth_registry.host)
    with pytest.raises(ImagePullError, match="requires credentials") as info:
        await p.resolve(name)
    assert info.value.reason == "unauthorized"
    with pytest.raises(ImagePullError, match="refused the credentials") as info:
        await p.resolve(name, credentials=Credentials(USER, "wrong"))
    assert info.value.reason == "unauthorized"
    assert "wrong" not in str(info.value)
    image = await p.resolve(name, credentials=Credentials(USER, PASSWORD))
    assert image.name == name
    server_auth = auth_file(tmp_path / "auth.json", auth_registry.host)
    p2 = puller(tmp_path / "file", auth_registry.host, auth_file=server_auth)
    assert (await p2.resolve(name)).digest == image.digest
    # Per-pull credentials leave nothing behind (the temporary auth file is gone).
    assert list((p.store.root / "pulls").iterdir()) == []


async def test_unknown_unreachable_local_and_disabled(
    tmp_path: Path, registry: Registry, pushed: Pushed
) -> None:
    """Each failure says why: no such image, registry unreachable, local/ names are never
    pulled, pulling switched off."""
    p = puller(tmp_path, registry.host)
    with pytest.raises(ImagePullError, match="no such image") as info:
        await p.resolve(f"{registry.host}/library/nothing-here:1")
    assert info.value.reason == "not_found"
    with pytest.raises(ImagePullError, match="unreachable") as info:
        await p.resolve("127.0.0.1:1/library/busybox:1")
    assert info.value.reason == "unreachable"
    with pytest.raises(ImagePullError, match="never pulled"):
        await p.resolve("local/busybox:1")
    off = puller(tmp_path / "off", registry.host, enabled=False)
    with pytest.raises(ImagePullError, match="does not pull") as info:
        await off.resolve(pushed.busybox)
    assert info.value.reason == "disabled"


@pytest.mark.parametrize(
    "name",
    [
        "oci:/etc",
        "dir:/root",
        "oci-archive:/tmp/x.tar",
        "docker-archive:/tmp/x.tar",
        "containers-storage:busybox",
        "docker://evil.example/x",
        "-v",
        "--authfile=/etc/shadow",
        "../../etc/passwd",
        "/etc/passwd",
        "busybox:1 --src-creds=a:b",
        "busybox\n--debug",
        "a:b:c",
    ],
)
async def test_hostile_references_never_reach_skopeo(tmp_path: Path, name: str) -> None:
    """References that are transports, options or paths are refused before any skopeo run."""
    log = tmp_path / "argv"
    fake = tmp_path / "skopeo"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexit 1\n')
    fake.chmod(0o755)
    p = puller(tmp_path, skopeo=str(fake))
    with pytest.raises(ImageError) as info:
        await p.resolve(name)
    assert not isinstance(info.value, ImagePullError)
    assert "invalid image name" in str(info.value)
    assert not log.exists()


async def test_the_reference_is_always_a_docker_source_after_double_dash(tmp_path: Path) -> None:
    """skopeo gets `-- docker://<qualified> oci:<scratch>:pulled`, nothing client-made before."""
    log = tmp_path / "argv"
    fake = tmp_path / "skopeo"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a" >> {log}; done\nexit 1\n')
    fake.chmod(0o755)
    p = puller(tmp_path, skopeo=str(fake))
    with pytest.raises(ImagePullError):
        await p.resolve("Team/App:V1")
    argv = log.read_text().splitlines()
    dash = argv.index("--")
    assert argv[dash + 1] == "docker://docker.io/team/app:V1"
    assert argv[dash + 2].startswith(f"oci:{p.store.root / 'pulls'}/")
    assert len(argv) == dash + 3
    assert not any("app" in a.lower() for a in argv[:dash])


async def test_gc_frees_unused_layers_keeps_shared_and_mounted_ones(
    tmp_path: Path, registry: Registry, pushed: Pushed
) -> None:
    """Removing an image frees only its own layers; a layer a mounted overlay (a running
    sandbox) uses survives removal and gc until it is unmounted."""
    store = ImageStore(tmp_path / "data" / "images")  # where `hutch image gc -d data` looks
    p = ImagePuller(store, RegistryConfig(insecure_registries=(registry.host,)))
    busybox = await p.resolve(pushed.busybox)
    multi = await p.resolve(pushed.multi)
    shared, marker = multi.layers
    assert busybox.layers == (shared,)  # same diff_id: stored once
    store.remove(pushed.multi)
    assert shared.is_dir()
    assert not marker.exists()
    assert store.gc().freed_layers == 0

    merged, upper, work = tmp_path / "merged", tmp_path / "upper", tmp_path / "work"
    for d in (merged, upper, work):
        d.mkdir()
    mount_overlay(str(merged), [str(shared)], str(upper), str(work))
    try:
        store.remove(pushed.busybox)
        assert shared.is_dir(), "a layer in use by a mounted overlay was deleted"
        assert (merged / "bin" / "busybox").is_file()
        result = store.gc()
        assert (result.freed_layers, result.in_use) == (0, 1)
        cli = await asyncio.to_thread(
            subprocess.run,
            [*HUTCH, "image", "gc", "--data-dir", str(tmp_path / "data")],
            capture_output=True,
            text=True,
        )
        assert cli.returncode == 0, cli.stderr
        assert "freed 0 layers" in cli.stdout
        assert "1 unused layers kept while sandboxes use them" in cli.stdout
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", str(merged)], check=True)
    result = store.gc()
    assert (result.freed_layers, result.in_use) == (1, 0)
    assert result.freed_bytes > 1_000_000
    assert list((store.root / "layers" / "sha256").iterdir()) == []
    assert list((store.root / "blobmap" / "sha256").iterdir()) == []


async def test_leftover_pull_directories_are_removed_unless_in_use(tmp_path: Path) -> None:
    """Scratch directories of interrupted pulls go at start-up; a locked (running) one stays."""
    import fcntl

    ImagePuller(ImageStore(tmp_path / "store"))
    pulls = tmp_path / "store" / "pulls"
    (pulls / "pull-dead").mkdir()
    (pulls / "pull-dead" / "blob").write_bytes(b"x" * 100)
    (pulls / "pull-live").mkdir()
    fd = os.open(pulls / "pull-live", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        ImagePuller(ImageStore(tmp_path / "store"))
        assert sorted(p.name for p in pulls.iterdir()) == ["pull-live"]
    finally:
        os.close(fd)
