"""Glob and literal grep as the runtime seam states them: patterns, bounds and results.

I/O-free: a runtime walks its sandbox's files with these (the runc backend's walk, confined to
the sandbox's root, is :mod:`hutch.runtime.runc._walk`).

Every search is bounded (:class:`Limits`): matches, directory entries examined, depth, bytes read
per file and in total, and wall-clock time. Hitting any bound ends the search early with
``truncated`` set, so a partial answer is never mistaken for a complete one.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = [
    "FileMatch",
    "GlobPattern",
    "Limits",
    "LineMatch",
    "SearchResult",
    "basename_matcher",
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
