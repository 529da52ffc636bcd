"""Glob and literal grep over a sandbox's filesystem, bounded and confined to its root.

The search root is resolved like every client path (``openat2`` with ``RESOLVE_IN_ROOT`` on the
sandbox's root fd, see :mod:`hutch.runtime.runc._fs`). Below it the walk opens each directory
and file by a path relative to the search root's fd with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``:
symlinks are reported as entries but never followed, and a directory the sandbox swaps for a
symlink mid-walk fails to open instead of leading anywhere. The walk never enters kernel-interface
filesystems (``/proc``, ``/sys``, …) below the search root and grep never reads a file on one.

The bounds and result types are :mod:`hutch.runtime._search` (the runtime seam's); hitting any
bound ends the search early with ``truncated`` set.

Everything here blocks; the runtime runs it in a worker thread.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime

from hutch.runtime._search import (
    BINARY_SNIFF,
    READ_CHUNK,
    FileMatch,
    GlobPattern,
    Limits,
    LineMatch,
    SearchResult,
)
from hutch.runtime.runc import _fs

__all__ = ["glob", "grep"]


class _Budget:
    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self._clock = clock
        self._deadline = clock() + limits.time_budget
        self.entries = 0
        #: A bound that ends the whole search was hit (time, entries).
        self.stopped = False
        #: Some directory was not descended into (too deep); the walk goes on elsewhere.
        self.cut = False

    @property
    def truncated(self) -> bool:
        return self.stopped or self.cut

    def out_of_time(self) -> bool:
        if self._clock() >= self._deadline:
            self.stopped = True
        return self.stopped

    def take_entry(self) -> bool:
        """Count one directory entry; False (and truncated) once the bound is reached."""
        if self.entries >= self.limits.max_entries:
            self.stopped = True
            return False
        self.entries += 1
        return True


@dataclass
class _Entry:
    rel: str  # relative to the search root, "/"-joined
    item: os.DirEntry[str]  # of a scandir on ``dir_fd``
    dir_fd: int  # the directory holding it, valid only until the walk moves on
    pseudo: bool  # that directory is on a kernel-interface filesystem

    @property
    def name(self) -> str:
        return self.item.name

    def lstat(self) -> os.stat_result:
        """Symlinks are entries, never followed. Raises OSError if it vanished."""
        return self.item.stat(follow_symlinks=False)


def _is_dir(item: os.DirEntry[str]) -> bool:
    try:
        return item.is_dir(follow_symlinks=False)  # d_type: no syscall on most filesystems
    except OSError:
        return False


def _walk(
    top: int, pattern: GlobPattern, budget: _Budget
) -> Generator[tuple[_Entry, frozenset[int]], None, None]:
    """Breadth-first walk below ``top`` (shallow entries first, names sorted per directory),
    yielding each entry with its pattern states; descends only where the pattern can still
    match. Entries that vanish or change type mid-walk are skipped."""
    # queue items: (relative dir path, pattern states, depth, parent st_dev, parent pseudo)
    queue: deque[tuple[str, frozenset[int], int, int, bool]] = deque()
    queue.append(("", pattern.start, 0, -1, False))
    queued_chars = 0
    while queue:
        rel, states, depth, parent_dev, parent_pseudo = queue.popleft()
        queued_chars -= len(rel)
        if budget.out_of_time():
            return
        if rel:
            try:
                dfd = _fs.open_child(top, rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno == errno.ENAMETOOLONG:
                    budget.cut = True  # deeper than PATH_MAX: not searched, so say so
                continue  # gone, or replaced by a symlink or a file: not ours to follow
        else:
            dfd = os.dup(top)
        try:
            dev = os.fstat(dfd).st_dev
            pseudo = parent_pseudo if dev == parent_dev else _fs.is_pseudo_fs(dfd)
            if pseudo and rel:
                continue  # never descend into /proc, /sys and the like (see _fs.PSEUDO_FS)
            # Only names are kept (and stat'ed lazily, for matches): a huge directory costs
            # memory for its names up to the entries bound, never a stat per entry.
            items: list[os.DirEntry[str]] = []
            with os.scandir(dfd) as it:
                for item in it:
                    if not budget.take_entry():
                        break
                    items.append(item)
            items.sort(key=lambda item: item.name)
            for item in items:
                child_rel = f"{rel}/{item.name}" if rel else item.name
                child_states = pattern.step(states, item.name)
                yield _Entry(child_rel, item, dfd, pseudo), child_states
                if _is_dir(item) and pattern.alive(child_states):
                    too_many = queued_chars + len(child_rel) > budget.limits.max_queued_chars
                    if depth + 1 >= budget.limits.max_depth or too_many:
                        budget.cut = True
                    else:
                        queue.append((child_rel, child_states, depth + 1, dev, pseudo))
                        queued_chars += len(child_rel)
            if budget.stopped:
                return
        finally:
            os.close(dfd)


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _join(root: str, rel: str) -> str:
    return posixpath.join(root, rel) if rel else root


def glob(
    root_fd: int,
    path: str,
    pattern: GlobPattern,
    limits: Limits,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> SearchResult[FileMatch]:
    """Entries below the directory ``path`` (absolute, normalised) whose relative path matches.

    Symlinks are reported as what they are (``is_dir`` false, the link's own size); directories
    report size 0. Raises :class:`~hutch.runtime._interface.FileError` when ``path`` cannot be
    opened as a directory.
    """
    budget = _Budget(limits, clock)
    out: SearchResult[FileMatch] = SearchResult()
    chars = 0
    top = _fs.open_dir(root_fd, path)
    walk = _walk(top, pattern, budget)
    try:
        for entry, states in walk:
            if not pattern.matched(states):
                continue
            if len(out.matches) >= limits.max_results:
                out.truncated = True
                break
            try:
                st = entry.lstat()
            except OSError:
                continue  # removed since it was listed
            is_dir = stat.S_ISDIR(st.st_mode)
            full = _join(path, entry.rel)
            chars += len(full)
            if chars > limits.max_text_chars:
                out.truncated = True
                break
            out.matches.append(
                FileMatch(
                    path=full,
                    is_dir=is_dir,
                    size_bytes=0 if is_dir else st.st_size,
                    modified_at=_rfc3339(st.st_mtime_ns),
                )
            )
    finally:
        walk.close()  # closes the directory fd it holds before ``top`` goes
        os.close(top)
    out.truncated = out.truncated or budget.truncated
    return out


class _GrepState:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.bytes_read = 0
        self.text_chars = 0
        self.matches: list[LineMatch] = []
        self.truncated = False
        self.done = False


def _line_text(raw: bytes, limits: Limits) -> str:
    raw = raw.rstrip(b"\r")
    # Cut the bytes first so a multi-megabyte line is never decoded whole.
    return raw[: limits.max_line_chars * 4].decode("utf-8", "replace")[: limits.max_line_chars]


def _grep_fd(fd: int, needle: bytes, path: str, state: _GrepState, budget: _Budget) -> None:
    """Search one open regular file, adding its matching lines to ``state``."""
    limits = state.limits
    allowed = min(limits.max_file_bytes, limits.max_total_bytes - state.bytes_read)
    lineno = 0  # newlines before ``pending``
    pending = b""  # the current, not yet complete line(s)
    first = True
    read = 0
    while True:
        if read >= allowed:
            # More bytes than this file's share: the rest is not searched, so say so.
            if os.read(fd, 1):
                state.truncated = True
            break
        chunk = os.read(fd, min(READ_CHUNK, allowed - read))
        if not chunk:
            break
        read += len(chunk)
        state.bytes_read += len(chunk)
        if first:
            first = False
            if b"\x00" in chunk[:BINARY_SNIFF]:
                return  # binary: skipped, like grep -I
        data = pending + chunk
        cut = data.rfind(b"\n") + 1
        complete, pending = data[:cut], data[cut:]
        lineno = _scan(complete, needle, path, lineno, state)
        if state.done or budget.out_of_time():
            state.truncated = state.truncated or budget.truncated
            state.done = True
            return
    if pending and not state.done:
        _scan(pending + b"\n", needle, path, lineno, state)


def _scan(block: bytes, needle: bytes, path: str, lineno: int, state: _GrepState) -> int:
    """Add the lines of ``block`` (complete lines) holding ``needle``; returns the new line count.

    ``bytes.find`` is linear in the block, so no pattern or line can make this slow.
    """
    limits = state.limits
    pos = block.find(needle)
    counted_to = 0
    while pos != -1:
        start = block.rfind(b"\n", 0, pos) + 1
        end = block.find(b"\n", pos)
        lineno += block.count(b"\n", counted_to, start)
        counted_to = start
        if len(state.matches) >= limits.max_results:
            state.truncated = state.done = True
            return lineno
        text = _line_text(block[start:end], limits)
        if state.text_chars + len(text) + len(path) > limits.max_text_chars:
            state.truncated = state.done = True
            return lineno
        state.text_chars += len(text) + len(path)
        state.matches.append(LineMatch(path=path, line=lineno + 1, text=text))
        pos = block.find(needle, end + 1)
    return lineno + block.count(b"\n", counted_to)


def grep(
    root_fd: int,
    path: str,
    needle: str,
    limits: Limits,
    *,
    pattern: GlobPattern | None = None,
    name_filter: Callable[[str], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SearchResult[LineMatch]:
    """Lines containing the literal ``needle`` in regular files below the directory ``path``.

    Files are chosen by ``pattern`` (relative path) or ``name_filter`` (base name); neither means
    every file. Binary files (a NUL in the first 8 KiB) are skipped, and so are symlinks, special
    files and files on kernel-interface filesystems. Line numbers are 1-based; text is UTF-8 with
    invalid bytes replaced.
    """
    needle_bytes = needle.encode()
    budget = _Budget(limits, clock)
    walk_pattern = pattern or GlobPattern("**")
    state = _GrepState(limits)
    top = _fs.open_dir(root_fd, path)
    walk = _walk(top, walk_pattern, budget)
    try:
        for entry, states in walk:
            if entry.pseudo or not walk_pattern.matched(states):
                continue
            if name_filter is not None and not name_filter(entry.name):
                continue
            try:
                if not entry.item.is_file(follow_symlinks=False):
                    continue  # directories, symlinks, fifos, devices, sockets
            except OSError:
                continue
            if state.bytes_read >= limits.max_total_bytes:
                state.truncated = True
                break
            try:
                fd = _fs.open_child(entry.dir_fd, entry.name, os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue  # swapped for a fifo or device since it was listed
                _grep_fd(fd, needle_bytes, _join(path, entry.rel), state, budget)
            except OSError:
                continue  # unreadable (EIO, vanished): skipped like grep -s
            finally:
                os.close(fd)
            if state.done:
                break
    finally:
        walk.close()
        os.close(top)
    return SearchResult(state.matches, state.truncated or budget.truncated)
