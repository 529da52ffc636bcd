"""Runtime conformance: the file contract of :class:`hutch.runtime._interface.SandboxFiles`,
run against every implementation (runc, as root; the in-process fake, as anyone).

Everything is arranged through the interface itself, except symlinks, which a sandbox plants
its own way (``ln -s`` inside runc, a plain symlink in the fake's root directory).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hutch.runtime._interface import (
    READ_CHUNK_BYTES,
    ExecSpec,
    FileError,
    FileNotFound,
    InvalidPath,
    NotADirectory,
    NotAFile,
    Runtime,
    SandboxNotFound,
    SandboxSpec,
)
from hutch.runtime._search import GlobPattern, Limits
from hutch.runtime.images import ImageStore
from hutch.runtime.testing import FAKE_IMAGE, FakeRuntime

pytestmark = pytest.mark.asyncio(loop_scope="session")

CANARY = b"canary-7d21e0"


@dataclass
class Backend:
    runtime: Runtime
    sandbox: str
    #: Plant a symlink ``path`` -> ``target`` as the sandbox itself would.
    symlink: Callable[[str, str], Awaitable[None]]


async def _runc_symlink(rt: Runtime, sandbox_id: str, path: str, target: str) -> None:
    proc = await rt.exec(sandbox_id, ExecSpec(argv=["ln", "-s", target, path]))
    try:
        await proc.stdout.read()
        assert await proc.wait() == 0
    finally:
        await proc.close()


@pytest.fixture(params=[pytest.param("runc", marks=pytest.mark.root), "fake"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A running sandbox on one implementation; everything of it is deleted afterwards."""
    sandbox_id = uuid.uuid4().hex  # runc cgroups are host-wide: ids must not collide
    if request.param == "runc":
        from hutch.runtime.runc import RuncRuntime

        busybox_tar: Path = request.getfixturevalue("busybox_tar")
        image = ImageStore(tmp_path / "images").import_path("local/busybox", busybox_tar)
        rt: Runtime = RuncRuntime(tmp_path / "data")
        await rt.create(SandboxSpec(id=sandbox_id, hostname="conf", image=image))

        async def link(path: str, target: str) -> None:
            await _runc_symlink(rt, sandbox_id, path, target)

    else:
        fake = FakeRuntime(tmp_path / "fake")
        rt = fake
        await rt.create(SandboxSpec(id=sandbox_id, hostname="conf", image=FAKE_IMAGE))

        async def link(path: str, target: str) -> None:
            os.symlink(target, fake.host_root(sandbox_id) / path.lstrip("/"))

    try:
        yield Backend(rt, sandbox_id, link)
    finally:
        for left in await rt.list_ids():
            await rt.delete(left)
        await rt.aclose()


async def _chunks(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def write(b: Backend, path: str, data: bytes) -> int:
    return await b.runtime.write_file(b.sandbox, path, _chunks([data[:7], data[7:]]))


async def read(b: Backend, path: str, offset: int = 0, length: int | None = None) -> bytes:
    reader = await b.runtime.open_file(b.sandbox, path)
    try:
        return b"".join([chunk async for chunk in reader.read(offset, length)])
    finally:
        await reader.aclose()


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host directory with a canary file: outside every sandbox."""
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(CANARY)
    return outside


async def test_write_then_read_back_with_parents_and_truncation(backend: Backend) -> None:
    """write_file creates missing parents, returns the size, and a rewrite truncates."""
    assert await write(backend, "/home/user/a/b/c.txt", b"hello, sandbox world\n") == 21
    assert await read(backend, "/home/user/a/b/c.txt") == b"hello, sandbox world\n"
    assert await backend.runtime.exists(backend.sandbox, "/home/user/a/b")
    assert await write(backend, "/home/user/a/b/c.txt", b"short") == 5
    assert await read(backend, "/home/user/a/b/c.txt") == b"short"
    assert not await backend.runtime.exists(backend.sandbox, "/home/user/nope")


async def test_ranges_chunks_and_stat(backend: Backend) -> None:
    """Reads honour offset and length, stop at EOF, chunk at most 1 MiB; stat tracks versions."""
    data = bytes(range(256)) * (10 * 1024 + 3)  # 2.5 MiB and a bit
    await write(backend, "/home/user/big.bin", data)
    reader = await backend.runtime.open_file(backend.sandbox, "/home/user/big.bin")
    try:
        assert reader.stat.size == len(data)
        chunks = [c async for c in reader.read()]
        assert b"".join(chunks) == data
        assert max(len(c) for c in chunks) <= READ_CHUNK_BYTES
        assert b"".join([c async for c in reader.read(1000, 5000)]) == data[1000:6000]
        assert b"".join([c async for c in reader.read(len(data) - 10, 100)]) == data[-10:]
        assert b"".join([c async for c in reader.read(len(data) + 1)]) == b""
        before = reader.stat.version
    finally:
        await reader.aclose()
    assert await read(backend, "/home/user/big.bin", 3, 4) == data[3:7]
    again = await backend.runtime.open_file(backend.sandbox, "/home/user/big.bin")
    await again.aclose()
    assert again.stat.version == before
    await write(backend, "/home/user/big.bin", b"changed")
    changed = await backend.runtime.open_file(backend.sandbox, "/home/user/big.bin")
    await changed.aclose()
    assert changed.stat.version != before
    assert changed.stat.size == 7


async def test_errors_are_typed(backend: Backend) -> None:
    """Missing files, directories as files, files as directories each raise their FileError."""
    rt, sid = backend.runtime, backend.sandbox
    await write(backend, "/home/user/file.txt", b"x")
    with pytest.raises(FileNotFound) as missing:
        await rt.open_file(sid, "/home/user/missing.txt")
    assert missing.value.path == "/home/user/missing.txt"
    with pytest.raises(NotAFile):
        await rt.open_file(sid, "/home/user")
    with pytest.raises(NotAFile):
        await write(backend, "/home/user", b"x")
    with pytest.raises(InvalidPath):
        await write(backend, "/home/user/file.txt/below.txt", b"x")
    with pytest.raises(FileNotFound):
        await rt.glob(sid, "/home/user/missing", GlobPattern("*"), Limits())
    with pytest.raises(NotADirectory):
        await rt.grep(sid, "/home/user/file.txt", "x", Limits())


async def test_failed_chunks_change_nothing(backend: Backend) -> None:
    """An exception from the chunks comes out unchanged and leaves the files as they were."""

    class Refused(Exception):
        pass

    async def broken() -> AsyncIterator[bytes]:
        yield b"new contents"
        raise Refused

    await write(backend, "/home/user/keep.txt", b"old")
    for path in ("/home/user/keep.txt", "/home/user/fresh/new.txt"):
        with pytest.raises(Refused):
            await backend.runtime.write_file(backend.sandbox, path, broken())
    assert await read(backend, "/home/user/keep.txt") == b"old"
    assert not await backend.runtime.exists(backend.sandbox, "/home/user/fresh")


async def test_glob_and_grep_with_bounds(backend: Backend) -> None:
    """glob lists breadth first with dotfiles; grep picks files by name or path; bounds truncate."""
    rt, sid = backend.runtime, backend.sandbox
    await write(backend, "/home/user/p/src/main.py", b"import os\nprint('hello')\n")
    await write(backend, "/home/user/p/src/pkg/util.py", b"def hello():\n    return 1\n")
    await write(backend, "/home/user/p/readme.md", b"# hello\n")
    await write(backend, "/home/user/p/.hidden", b"hello hidden\n")
    await write(backend, "/home/user/p/blob.bin", b"hello\x00binary")
    top = await rt.glob(sid, "/home/user/p", GlobPattern("*"), Limits())
    assert [m.path for m in top.matches] == [
        "/home/user/p/.hidden",
        "/home/user/p/blob.bin",
        "/home/user/p/readme.md",
        "/home/user/p/src",
    ]
    assert [m.is_dir for m in top.matches] == [False, False, False, True]
    assert not top.truncated
    py = await rt.glob(sid, "/home/user/p", GlobPattern("**/*.py"), Limits())
    assert [m.path for m in py.matches] == [
        "/home/user/p/src/main.py",
        "/home/user/p/src/pkg/util.py",
    ]
    assert (await rt.glob(sid, "/home/user/p", GlobPattern("**"), Limits(max_results=2))).truncated
    found = await rt.grep(sid, "/home/user/p", "hello", Limits())
    assert [(m.path, m.line) for m in found.matches] == [
        ("/home/user/p/.hidden", 1),
        ("/home/user/p/readme.md", 1),
        ("/home/user/p/src/main.py", 2),
        ("/home/user/p/src/pkg/util.py", 1),
    ]
    by_name = await rt.grep(sid, "/home/user/p", "hello", Limits(), name_pattern="*.py")
    assert [m.path for m in by_name.matches] == [
        "/home/user/p/src/main.py",
        "/home/user/p/src/pkg/util.py",
    ]
    by_path = await rt.grep(
        sid, "/home/user/p", "hello", Limits(), path_pattern=GlobPattern("src/*.py")
    )
    assert [m.text for m in by_path.matches] == ["print('hello')"]
    assert (await rt.grep(sid, "/home/user/p", "hello", Limits(max_results=1))).truncated


async def test_symlinks_never_reach_the_host(backend: Backend, host: Path) -> None:
    """Links to host paths, through .., / or /proc/1/root resolve inside the sandbox or fail."""
    rt, sid = backend.runtime, backend.sandbox
    secret = str(host / "secret.txt")
    await backend.symlink("/home/user/abs", secret)
    await backend.symlink("/home/user/dots", "../../../../../../.." + secret)
    await backend.symlink("/home/user/magic", "/proc/1/root" + secret)
    await backend.symlink("/home/user/slash", "/")
    await backend.symlink("/home/user/hostdir", str(host))
    for path in ("abs", "dots", "magic", "slash" + secret, "hostdir/secret.txt"):
        with pytest.raises((FileNotFound, InvalidPath)):
            await rt.open_file(sid, f"/home/user/{path}")
    with pytest.raises(FileError):
        await write(backend, "/home/user/hostdir/planted.txt", b"x")
    with pytest.raises(FileError):
        await write(backend, "/home/user/abs", b"overwritten")
    assert sorted(os.listdir(host)) == ["secret.txt"]
    assert (host / "secret.txt").read_bytes() == CANARY
    canary = CANARY.decode()
    assert (await rt.grep(sid, "/home/user", canary, Limits())).matches == []
    links = await rt.glob(sid, "/home/user", GlobPattern("**"), Limits())
    assert not any(m.path.startswith("/home/user/hostdir/") for m in links.matches)


async def test_a_stopped_sandbox_has_no_files_to_serve(backend: Backend) -> None:
    """Every file operation on a stopped sandbox raises SandboxNotFound."""
    rt, sid = backend.runtime, backend.sandbox
    await write(backend, "/home/user/f.txt", b"x")
    await rt.stop(sid)
    with pytest.raises(SandboxNotFound):
        await rt.open_file(sid, "/home/user/f.txt")
    with pytest.raises(SandboxNotFound):
        await write(backend, "/home/user/g.txt", b"x")
    with pytest.raises(SandboxNotFound):
        await rt.exists(sid, "/home/user")
    with pytest.raises(SandboxNotFound):
        await rt.glob(sid, "/home/user", GlobPattern("*"), Limits())
