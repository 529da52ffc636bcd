"""Glob and grep over a directory fd (hutch.runtime._search), with a temp dir standing in for a
sandbox's root: matching, ordering, every bound and its ``truncated``, and confinement — no
symlink, ``..`` or magic link below the root may lead the walk to a file outside it.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hutch.runtime import _search
from hutch.runtime._interface import FileError, FileNotFound, NotADirectory
from hutch.runtime._search import GlobPattern, Limits
from hutch.runtime.runc import _fs, _walk

CANARY = "canary-4f9a1c"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A "host" directory holding a canary file, next to the sandbox root (not inside it)."""
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "secret.txt").write_text(f"{CANARY}\n")
    return outside


@pytest.fixture
def tree(tmp_path: Path, host: Path) -> Path:
    """A small sandbox root with files, a binary, and hostile symlinks to the host."""
    root = tmp_path / "root"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "src" / "main.py").write_text("import os\nprint('hello')\n")
    (root / "src" / "pkg" / "util.py").write_text("def hello():\n    return 1\n")
    (root / "docs" / "readme.md").write_text("# hello\nworld\n")
    (root / ".hidden").write_text("hello hidden\n")
    (root / "blob.bin").write_bytes(b"hello\x00\x01\x02")
    os.symlink("/", root / "to_slash")
    os.symlink(str(host), root / "to_host")
    os.symlink("../host", root / "up")
    os.symlink("/proc/1/root", root / "magic")
    os.symlink(str(host / "secret.txt"), root / "src" / "secret_link.txt")
    return root


@pytest.fixture
def root_fd(tree: Path) -> Iterator[int]:
    fd = os.open(tree, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def _paths(result: _search.SearchResult[_search.FileMatch]) -> list[str]:
    return [m.path for m in result.matches]


def test_glob_star_lists_one_level_with_dotfiles_and_links_as_entries(root_fd: int) -> None:
    """``*`` lists a directory's entries (dotfiles too, sorted); symlinks are not dirs."""
    result = _walk.glob(root_fd, "/", GlobPattern("*"), Limits())
    assert _paths(result) == [
        "/.hidden",
        "/blob.bin",
        "/docs",
        "/magic",
        "/src",
        "/to_host",
        "/to_slash",
        "/up",
    ]
    by_path = {m.path: m for m in result.matches}
    assert by_path["/src"].is_dir and by_path["/src"].size_bytes == 0
    assert not by_path["/to_slash"].is_dir
    assert by_path["/blob.bin"].size_bytes == 8
    assert by_path["/blob.bin"].modified_at.endswith("Z")
    assert not result.truncated


def test_glob_double_star_recurses_breadth_first_without_following_links(root_fd: int) -> None:
    """``**/*.py`` finds files at every depth, shallow first; links are never walked into."""
    result = _walk.glob(root_fd, "/", GlobPattern("**/*.py"), Limits())
    assert _paths(result) == ["/src/main.py", "/src/pkg/util.py"]
    everything = _paths(_walk.glob(root_fd, "/", GlobPattern("**"), Limits()))
    links = ("/to_host/", "/to_slash/", "/up/", "/magic/")
    assert not [p for p in everything if p.startswith(links)]
    assert "/src/pkg/util.py" in everything


def test_glob_relative_to_a_subdirectory(root_fd: int) -> None:
    """Paths come back absolute; the pattern is relative to the search root."""
    result = _walk.glob(root_fd, "/src", GlobPattern("pkg/*.py"), Limits())
    assert _paths(result) == ["/src/pkg/util.py"]


def test_search_root_through_a_symlink_stays_in_the_sandbox(root_fd: int, host: Path) -> None:
    """A symlink as the search root resolves inside the sandbox's root, never on the host."""
    slash = _walk.glob(root_fd, "/to_slash", GlobPattern("*"), Limits())
    assert "/to_slash/src" in _paths(slash)  # "/" of the sandbox, not of the host
    for hostile in ("/to_host", "/up", "/magic", "/src/secret_link.txt/.."):
        with pytest.raises(FileError):
            _walk.glob(root_fd, hostile, GlobPattern("**"), Limits())
    for path in ("/", "/to_slash", "/src"):
        found = _walk.grep(root_fd, path, CANARY, Limits())
        assert found.matches == [], path


def test_open_child_refuses_symlinks_anywhere_in_the_path(tree: Path) -> None:
    """A walk's open of ``dir/name`` fails if any component is a symlink (a mid-walk swap)."""
    top = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for rel in ("to_slash", "to_slash/src", "up/secret.txt", "src/secret_link.txt"):
            with pytest.raises(OSError):
                os.close(_fs.open_child(top, rel, os.O_RDONLY))
        with pytest.raises(OSError):
            os.close(_fs.open_child(top, "../host/secret.txt", os.O_RDONLY))
        os.close(_fs.open_child(top, "src/main.py", os.O_RDONLY))
    finally:
        os.close(top)


def test_grep_reports_lines_and_skips_binary_and_links(root_fd: int) -> None:
    """Matching lines with 1-based numbers; binary files and symlinked files are not read."""
    result = _walk.grep(root_fd, "/", "hello", Limits())
    assert [(m.path, m.line, m.text) for m in result.matches] == [
        ("/.hidden", 1, "hello hidden"),
        ("/docs/readme.md", 1, "# hello"),
        ("/src/main.py", 2, "print('hello')"),
        ("/src/pkg/util.py", 1, "def hello():"),
    ]
    assert not result.truncated


def test_grep_is_literal(tmp_path: Path) -> None:
    """The pattern is literal text: regex metacharacters match themselves."""
    (tmp_path / "a.txt").write_text("x = f(1)\nx = f1\n.*\n")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        assert [m.line for m in _walk.grep(fd, "/", "f(1)", Limits()).matches] == [1]
        assert [m.line for m in _walk.grep(fd, "/", ".*", Limits()).matches] == [3]
    finally:
        os.close(fd)


def test_grep_file_filters(root_fd: int) -> None:
    """A bare glob filters by base name at any depth; one with ``/`` by relative path."""
    by_name = _walk.grep(
        root_fd, "/", "hello", Limits(), name_filter=_search.basename_matcher("*.py")
    )
    assert [m.path for m in by_name.matches] == ["/src/main.py", "/src/pkg/util.py"]
    by_path = _walk.grep(root_fd, "/", "hello", Limits(), pattern=GlobPattern("src/*.py"))
    assert [m.path for m in by_path.matches] == ["/src/main.py"]


def test_grep_line_numbers_across_read_chunks(tmp_path: Path) -> None:
    """Line numbers stay right when lines straddle the 1 MiB read chunks."""
    lines = [f"line {i}" + ("x" * (i % 100)) for i in range(60_000)]
    lines[1] += " needle"
    lines[45_123] += " needle"
    lines[-1] += " needle"
    (tmp_path / "big.txt").write_text("\n".join(lines))  # no final newline
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        result = _walk.grep(fd, "/", "needle", Limits())
    finally:
        os.close(fd)
    assert [m.line for m in result.matches] == [2, 45_124, 60_000]
    assert not result.truncated
    assert result.matches[1].text == lines[45_123]


def test_bounds_set_truncated(tmp_path: Path) -> None:
    """Every bound ends the search early with ``truncated``: results, entries, depth, queue,
    bytes, line length, response size, time."""
    for i in range(30):
        (tmp_path / f"f{i:02}.txt").write_text("hit\n" * 3)
    deep = tmp_path / "d"
    for _ in range(5):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("hit\n")
    (tmp_path / "long.txt").write_text("hit" + "y" * 10_000 + "\n")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        capped = _walk.glob(fd, "/", GlobPattern("*.txt"), Limits(max_results=5))
        assert len(capped.matches) == 5 and capped.truncated
        exact = _walk.glob(fd, "/", GlobPattern("f0*.txt"), Limits(max_results=10))
        assert len(exact.matches) == 10 and not exact.truncated
        assert _walk.glob(fd, "/", GlobPattern("**"), Limits(max_entries=10)).truncated
        shallow = _walk.glob(fd, "/", GlobPattern("**/bottom.txt"), Limits(max_depth=3))
        assert shallow.matches == [] and shallow.truncated
        assert len(_walk.grep(fd, "/", "hit", Limits(max_results=7)).matches) == 7
        assert _walk.grep(fd, "/", "hit", Limits(max_file_bytes=5)).truncated
        assert _walk.grep(fd, "/", "hit", Limits(max_total_bytes=20)).truncated
        long = _walk.grep(fd, "/", "hit", Limits(max_line_chars=10), pattern=GlobPattern("l*"))
        assert long.matches[0].text == "hit" + "y" * 7
        queue_cut = _walk.glob(fd, "/", GlobPattern("**/bottom.txt"), Limits(max_queued_chars=4))
        assert queue_cut.matches == [] and queue_cut.truncated
        assert _walk.glob(fd, "/", GlobPattern("*"), Limits(max_text_chars=40)).truncated
        assert _walk.grep(fd, "/", "hit", Limits(max_text_chars=40)).truncated
        ticks = itertools.count()
        slow = _walk.glob(
            fd, "/", GlobPattern("**"), Limits(time_budget=3), clock=lambda: next(ticks)
        )
        assert slow.truncated
    finally:
        os.close(fd)


def test_search_root_errors(root_fd: int) -> None:
    """A missing root is FileNotFound; a file as the root is NotADirectory."""
    with pytest.raises(FileNotFound):
        _walk.glob(root_fd, "/nope", GlobPattern("*"), Limits())
    with pytest.raises(NotADirectory):
        _walk.grep(root_fd, "/src/main.py", "x", Limits())


@pytest.mark.parametrize(
    "bad", ["", "/abs/*.py", "../*", "a/../../b", "x\x00y", "*" * 2000, "./", "/".join("a" * 65)]
)
def test_glob_pattern_refuses(bad: str) -> None:
    """Empty, absolute, ``..``, NUL, overlong and over-deep patterns are refused."""
    with pytest.raises(ValueError):
        GlobPattern(bad)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*", "a", True),
        ("*", "a/b", False),
        ("**", "a/b/c", True),
        ("**/*.py", "x.py", True),
        ("**/*.py", "a/b/x.py", True),
        ("a/**/z", "a/z", True),
        ("a/**/z", "a/b/c/z", True),
        ("a/**/z", "b/z", False),
        ("src/*.py", "src/a.py", True),
        ("src/*.py", "src/p/a.py", False),
        ("[ab]?.txt", "bc.txt", True),
        ("*.PY", "a.py", False),
        ("./*.md", "r.md", True),
    ],
)
def test_glob_pattern_semantics(pattern: str, path: str, expected: bool) -> None:
    """``**`` spans any number of segments (zero too); other wildcards stay in one segment."""
    assert GlobPattern(pattern).match(path) is expected


_segment = st.text(alphabet="ab.*?", min_size=1, max_size=4).filter(
    lambda s: s not in (".", "..") and s != "**"
)
_name = st.text(alphabet="ab.", min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))


@given(st.lists(_segment, min_size=1, max_size=4), st.lists(_name, min_size=1, max_size=4))
def test_glob_without_double_star_is_fnmatch_per_segment(
    pattern: list[str], path: list[str]
) -> None:
    """Without ``**``, a pattern matches exactly when each segment fnmatches its counterpart."""
    expected = len(pattern) == len(path) and all(
        fnmatch.fnmatchcase(n, p) for p, n in zip(pattern, path, strict=True)
    )
    assert GlobPattern("/".join(pattern)).match("/".join(path)) is expected


@given(st.lists(_name, min_size=1, max_size=5))
def test_double_star_prefix_matches_any_depth(path: list[str]) -> None:
    """``**/<name>`` matches a path exactly when its last segment is that name."""
    assert GlobPattern("**/" + path[-1]).match("/".join(path))
    assert GlobPattern("**").match("/".join(path))


def test_pseudo_filesystems_are_recognised(tmp_path: Path) -> None:
    """/proc and /sys are kernel-interface filesystems; an ordinary directory is not."""
    for path, expected in (("/proc", True), ("/sys", True), (str(tmp_path), False)):
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
        try:
            assert _fs.is_pseudo_fs(fd) is expected, path
        finally:
            os.close(fd)
