"""Files of the runc runtime (:class:`~hutch.runtime._interface.SandboxFiles`), through the
sandbox's root as the sandbox sees it.

Every path is resolved by the kernel against an ``O_PATH`` fd of that root
(``/proc/<init pid>/root``) with ``openat2(RESOLVE_IN_ROOT)`` (:mod:`._fs`), and searches walk
below it without following symlinks (:mod:`._walk`): nothing a sandbox puts in its files can
make the server touch a host file. Files the server creates belong to the sandbox's root user.

Blocking calls run in worker threads; searches on a pool of their own (:data:`SEARCH_WORKERS`).
The class is a mixin over anything that gives a root fd and an owner per sandbox, so the
in-process fake runtime (:mod:`hutch.runtime.testing`) shares these exact path rules.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, TypeVar

from hutch.runtime._interface import (
    READ_CHUNK_BYTES,
    FileIOError,
    FileReader,
    FileStat,
    SandboxFiles,
)
from hutch.runtime._search import (
    FileMatch,
    GlobPattern,
    Limits,
    LineMatch,
    SearchResult,
    basename_matcher,
)
from hutch.runtime.runc import _fs, _walk

T = TypeVar("T")

#: Searches running at once in this process; more wait their turn. Each one is bounded in time
#: (``Limits.time_budget``), so a wait is too. The pool lives as long as the process; its
#: threads finish their (bounded) search on shutdown.
SEARCH_WORKERS = 4
_POOL = concurrent.futures.ThreadPoolExecutor(SEARCH_WORKERS, thread_name_prefix="hutch-search")
#: Bytes of an upload gathered before one thread write to the spool file.
WRITE_BATCH = 1 << 20


class _FdReader(FileReader):
    def __init__(self, fd: int, stat: FileStat) -> None:
        self._fd: int | None = fd
        self.stat = stat

    async def read(self, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        fd = self._fd
        if fd is None:
            raise ValueError("read of a closed file")
        remaining = length
        while remaining is None or remaining > 0:
            want = READ_CHUNK_BYTES if remaining is None else min(READ_CHUNK_BYTES, remaining)
            chunk = await asyncio.to_thread(os.pread, fd, want, offset)
            if not chunk:
                return  # EOF: the file shrank meanwhile, or the whole file was read
            offset += len(chunk)
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk

    async def aclose(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class FdFiles(SandboxFiles):
    """File operations over ``root_fd`` (an ``O_PATH`` fd of the sandbox's root as the sandbox
    sees it, the caller closes it; SandboxNotFound when it is not running) and ``file_owner``
    (host uid and gid the sandbox's root owns files as), which the concrete class gives."""

    if TYPE_CHECKING:

        def root_fd(self, sandbox_id: str) -> int: ...

        def file_owner(self, sandbox_id: str) -> tuple[int, int]: ...

    async def exists(self, sandbox_id: str, path: str) -> bool:
        root = self.root_fd(sandbox_id)
        try:
            # An O_PATH lookup reads no file contents; done inline as the server always did.
            return _fs.exists(root, path)
        finally:
            os.close(root)

    async def open_file(self, sandbox_id: str, path: str) -> FileReader:
        root = self.root_fd(sandbox_id)
        try:
            fd, _ = _fs.open_for_read(root, path)
        finally:
            os.close(root)
        try:
            # One fstat of the open fd: the stat and every byte read describe the same inode.
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        version = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        return _FdReader(fd, FileStat(st.st_size, st.st_mtime_ns, version))

    async def write_file(self, sandbox_id: str, path: str, chunks: AsyncIterable[bytes]) -> int:
        root = self.root_fd(sandbox_id)
        try:
            spool = await asyncio.to_thread(_spool_file, root, path)
            try:
                size = await _fill(spool, chunks)
                owner = self.file_owner(sandbox_id)
                await asyncio.to_thread(_copy_into, root, path, spool, size, owner)
            finally:
                os.close(spool)
        finally:
            os.close(root)
        return size

    async def glob(
        self, sandbox_id: str, path: str, pattern: GlobPattern, limits: Limits
    ) -> SearchResult[FileMatch]:
        return await self._search(sandbox_id, lambda root: _walk.glob(root, path, pattern, limits))

    async def grep(
        self,
        sandbox_id: str,
        path: str,
        needle: str,
        limits: Limits,
        *,
        path_pattern: GlobPattern | None = None,
        name_pattern: str | None = None,
    ) -> SearchResult[LineMatch]:
        by_name = basename_matcher(name_pattern) if name_pattern is not None else None
        return await self._search(
            sandbox_id,
            lambda root: _walk.grep(
                root, path, needle, limits, pattern=path_pattern, name_filter=by_name
            ),
        )

    async def _search(self, sandbox_id: str, job: Callable[[int], T]) -> T:
        """Run ``job(root_fd)`` on the search pool; the job's thread owns (and closes) the fd."""
        root = self.root_fd(sandbox_id)

        def owned() -> T:
            try:
                return job(root)
            finally:
                os.close(root)

        future = _POOL.submit(owned)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # The caller went away. A search already running finishes within its time budget
            # and closes the fd itself; one still queued never runs, so its fd is ours to close.
            if future.cancel():
                os.close(root)
            raise


def _spool_file(root: int, target: str) -> int:
    """An unnamed file in the sandbox's root directory: in its storage, under its disk quota,
    out of its reach (no name), and gone when closed."""
    try:
        return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=root)
    except OSError as exc:
        raise FileIOError(
            target, f"Cannot make room for the upload in the sandbox: {exc.strerror}"
        ) from exc


async def _fill(spool: int, chunks: AsyncIterable[bytes]) -> int:
    """Write ``chunks`` to ``spool``, a thread write per :data:`WRITE_BATCH` bytes or so."""
    batch: list[bytes] = []
    batched = total = 0
    async for chunk in chunks:
        batch.append(chunk)
        batched += len(chunk)
        total += len(chunk)
        if batched >= WRITE_BATCH:
            await asyncio.to_thread(_write_spool, spool, batch)
            batch, batched = [], 0
    await asyncio.to_thread(_write_spool, spool, batch)
    return total


def _write_spool(spool: int, batch: list[bytes]) -> None:
    try:
        _fs.write_all(spool, batch)
    except OSError as exc:  # a full disk or the sandbox's quota, mostly
        raise FileIOError(
            "upload", f"Cannot store the upload in the sandbox: {exc.strerror}"
        ) from exc


def _copy_into(root: int, target: str, spool: int, size: int, owner: tuple[int, int]) -> None:
    """Copy the spooled bytes into ``target`` (created or truncated) in the kernel."""
    fd = _fs.open_for_write(root, target, *owner)
    try:
        done = 0
        while done < size:
            n = os.copy_file_range(spool, fd, size - done, done)
            if n == 0:
                break
            done += n
    except OSError as exc:
        raise FileIOError(target, f"Cannot write '{target}': {exc.strerror}") from exc
    finally:
        os.close(fd)
