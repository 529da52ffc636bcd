"""Glob and literal grep over a sandbox's filesystem, bounded and confined to its root.

The search root is resolved like every client path (``openat2`` with ``RESOLVE_IN_ROOT`` on the
sandbox's root fd, see :mod:`hutch.runtime._fs`). Below it the walk opens each directory and
file by a path relative to the search root's fd with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``:
symlinks are reported as entries but never followed, and a directory the sandbox swaps for a
symlink mid-walk fails to open instead of leading anywhere. The walk never enters kernel-interface
filesystems (``/proc``, ``/sys``, …) below the search root and grep never reads a file on one.

Every search is bounded (:class:`Limits`): matches, directory entries examined, depth, bytes read
per file and in total, and wall-clock time. Hitting any bound ends the search early with
``truncated`` set, so a partial answer is never mistaken for a complete one.

Everything here blocks; the server runs it in a worker thread.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import posixpath
import re
import stat
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from hutch.runtime import _fs

__all__ = [
    "FileMatch",
    "GlobPattern",
    "Limits",
    "LineMatch",
    "SearchResult",
    "glob",
    "grep",
]

KiB = 1024
MiB = 1024 * KiB
#: Bytes looked at for a NUL to call a file binary (what GNU grep does, roughly).
BINARY_SNIFF = 8 * KiB
READ_CHUNK = 1 * MiB


@dataclass(frozen=True)
class Limits:
    """Bounds of one search. Hitting any of them sets ``truncated``."""

    #: Matches returned.
    max_results: int = 1000
    #: Directory entries examined (listed), matching or not.
    max_entries: int = 100_000
    #: Directory levels below the search root.
    max_depth: int = 64
    #: Characters of directory paths waiting to be walked (the breadth-first queue).
    max_queued_chars: int = 16 * MiB
    #: Wall-clock seconds for the whole search.
    time_budget: float = 10.0
    #: grep: bytes read from one file (the rest of a bigger file is not searched).
    max_file_bytes: int = 8 * MiB
    #: grep: bytes read from all files together.
    max_total_bytes: int = 256 * MiB
    #: grep: characters of a matching line returned (longer lines are cut).
    max_line_chars: int = 2000
    #: Characters of paths and line text returned in all matches together.
    max_text_chars: int = 8 * MiB


@dataclass(frozen=True)
class FileMatch:
    path: str
    is_dir: bool
    size_bytes: int
    modified_at: str


@dataclass(frozen=True)
class LineMatch:
    path: str
    line: int
    text: str


T = TypeVar("T")


@dataclass
class SearchResult(Generic[T]):
    matches: list[T] = field(default_factory=list)
    truncated: bool = False


class GlobPattern:
    """A glob over paths relative to the search root, matched one path segment at a time.

    ``**`` as a whole segment matches any number of segments (zero included); within a segment
    ``*``, ``?`` and ``[...]`` work as in :mod:`fnmatch` (case-sensitive, and ``*`` matches a
    leading dot, like ``ls -A``). Matching is an NFA over segment positions, so a walk can tell
    after each directory name whether anything below it can still match and prune the rest.
    """

    MAX_CHARS = 1024
    MAX_SEGMENTS = 64

    def __init__(self, pattern: str) -> None:
        if not pattern or "\x00" in pattern:
            raise ValueError("pattern must be non-empty and must not contain NUL bytes")
        if len(pattern) > self.MAX_CHARS:
            raise ValueError(f"pattern is longer than {self.MAX_CHARS} characters")
        if pattern.startswith("/"):
            raise ValueError(
                "pattern is matched against paths relative to 'path'; put the directory in "
                "'path' and make the pattern relative (e.g. '**/*.py')"
            )
        parts = [p for p in pattern.split("/") if p and p != "."]
        if ".." in parts:
            raise ValueError("pattern must not contain '..' segments; search from a higher 'path'")
        if not parts:
            raise ValueError("pattern matches nothing; use '*' to list a directory")
        if len(parts) > self.MAX_SEGMENTS:
            raise ValueError(f"pattern has more than {self.MAX_SEGMENTS} segments")
        self.pattern = pattern
        self._segments: list[re.Pattern[str] | None] = [
            None if p == "**" else re.compile(fnmatch.translate(p), re.DOTALL) for p in parts
        ]
        self._end = len(parts)
        self.start = self._closure({0})

    def _closure(self, states: set[int]) -> frozenset[int]:
        # ``**`` may match zero segments: a state on it also stands on the next one.
        todo = list(states)
        seen = set(states)
        while todo:
            i = todo.pop()
            if i < self._end and self._segments[i] is None and i + 1 not in seen:
                seen.add(i + 1)
                todo.append(i + 1)
        return frozenset(seen)

    def step(self, states: frozenset[int], name: str) -> frozenset[int]:
        """The states after consuming one path segment ``name``."""
        nxt: set[int] = set()
        for i in states:
            if i >= self._end:
                continue
            seg = self._segments[i]
            if seg is None:
                nxt.add(i)  # ``**`` consumes this segment and may consume more
            elif seg.match(name):
                nxt.add(i + 1)
        return self._closure(nxt)

    def matched(self, states: frozenset[int]) -> bool:
        return self._end in states

    def alive(self, states: frozenset[int]) -> bool:
        """Whether a deeper path could still match (worth descending)."""
        return any(i < self._end for i in states)

    def match(self, rel_path: str) -> bool:
        """Whether a relative path matches (for tests and one-off checks)."""
        states = self.start
        for part in rel_path.split("/"):
            states = self.step(states, part)
        return self.matched(states)


def basename_matcher(pattern: str) -> Callable[[str], bool]:
    """A one-segment glob matched against a file's name (grep's bare ``*.py`` form)."""
    rx = re.compile(fnmatch.translate(pattern), re.DOTALL)
    return lambda name: rx.match(name) is not None


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
    report size 0. Raises :class:`~hutch.runtime._fs.SandboxPathError` when ``path`` cannot be
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
