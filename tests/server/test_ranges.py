"""Conditional requests and byte ranges of file downloads (hutch.server._ranges, RFC 9110),
without a server: what a request's headers make the download answer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hutch.server._ranges import (
    ByteRange,
    Plan,
    content_disposition,
    content_type_for,
    etag_for,
    plan,
    valid_media_type,
)

ETAG = '"abc"'
DATE = "Tue, 01 Jul 2025 10:00:00 GMT"


def _plan(
    range_header: str | None,
    size: int = 100,
    *,
    method: str = "GET",
    if_range: str | None = None,
    if_none_match: str | None = None,
) -> Plan:
    return plan(
        method=method,
        size=size,
        etag=ETAG,
        last_modified=DATE,
        range_header=range_header,
        if_range=if_range,
        if_none_match=if_none_match,
    )


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=10-19", 100, (10, 19)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-500", 100, (0, 99)),
        ("bytes=50-5000", 100, (50, 99)),
        (" bytes = 1 - 2 ", 100, (1, 2)),
        ("bytes=99-99", 100, (99, 99)),
    ],
)
def test_single_ranges(header: str, size: int, expected: tuple[int, int]) -> None:
    """First, middle, open-ended and suffix ranges; ends past EOF are clamped."""
    assert _plan(header, size).range == ByteRange(*expected, size)


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0", "bytes=5000-"])
def test_unsatisfiable(header: str) -> None:
    """A range starting at or past EOF (or an empty suffix) is 416."""
    assert _plan(header).unsatisfiable


@pytest.mark.parametrize(
    "header",
    ["bytes=0-1,5-6", "bytes=9-3", "items=0-1", "bytes=", "bytes=-", "bytes=a-b", "bytes=1" * 30],
)
def test_ignored_ranges_give_the_whole_file(header: str) -> None:
    """Multiple ranges, invalid syntax and other units are ignored: 200 with the whole file."""
    assert _plan(header) == Plan()


def test_empty_file() -> None:
    """An empty file has no byte 0 (416), and a suffix of it is the whole (empty) file."""
    assert _plan("bytes=0-", 0).unsatisfiable
    assert _plan("bytes=-5", 0) == Plan()


def test_if_none_match() -> None:
    """A matching If-None-Match (weakly compared, lists, ``*``) is 304, before any Range."""
    for header in (ETAG, f'"x", {ETAG}', f"W/{ETAG}", "*"):
        assert _plan("bytes=0-1", if_none_match=header).not_modified
        assert _plan(None, method="HEAD", if_none_match=header).not_modified
    assert _plan("bytes=0-1", if_none_match='"other"').range == ByteRange(0, 1, 100)


def test_if_range() -> None:
    """If-Range honours the range only while the ETag (strong) or date matches."""
    assert _plan("bytes=0-1", if_range=ETAG).range is not None
    assert _plan("bytes=0-1", if_range=DATE).range is not None
    for stale in ('"old"', f"W/{ETAG}", "Wed, 02 Jul 2025 10:00:00 GMT"):
        assert _plan("bytes=0-1", if_range=stale) == Plan()


def test_range_applies_to_get_only() -> None:
    """HEAD ignores Range (it describes the whole file)."""
    assert _plan("bytes=0-1", method="HEAD") == Plan()


@given(st.integers(0, 10**6), st.integers(0, 10**7), st.integers(0, 10**7))
def test_ranges_stay_inside_the_file(size: int, a: int, b: int) -> None:
    """Whatever the numbers, a 206 range lies inside the file and is non-empty."""
    for header in (f"bytes={a}-{b}", f"bytes={a}-", f"bytes=-{b}"):
        got = _plan(header, size).range
        if got is not None:
            assert 0 <= got.first <= got.last < size
            assert got.length == got.last - got.first + 1


def test_etag_changes_with_the_file(tmp_path: Path) -> None:
    """The ETag is strong (quoted, no W/) and changes when the file is rewritten."""
    f = tmp_path / "f"
    f.write_bytes(b"one")
    first = etag_for(os.stat(f))
    assert first.startswith('"') and first.endswith('"')
    assert etag_for(os.stat(f)) == first
    f.write_bytes(b"two")
    os.utime(f, ns=(1, 2))
    assert etag_for(os.stat(f)) != first


def test_content_headers() -> None:
    """Types guessed from names; dispositions quoted safely with an RFC 8187 name."""
    assert content_type_for("/a/b.txt") == "text/plain"
    assert content_type_for("/a/b.json") == "application/json"
    assert content_type_for("/a/b.tar.gz") == "application/octet-stream"
    assert content_type_for("/a/noext") == "application/octet-stream"
    assert content_disposition("attachment", "r.csv") == (
        "attachment; filename=\"r.csv\"; filename*=UTF-8''r.csv"
    )
    evil = 'a"b\\c\r\nSet-Cookie: x=1;é.txt'
    header = content_disposition("inline", evil)
    assert "\r" not in header and "\n" not in header
    assert header.startswith('inline; filename="a_b_c__Set-Cookie: x=1;_.txt"; ')
    assert header.endswith("filename*=UTF-8''a%22b%5Cc%0D%0ASet-Cookie%3A%20x%3D1%3B%C3%A9.txt")
    assert valid_media_type("text/plain; charset=utf-8")
    assert valid_media_type('text/csv; header="present"')
    for bad in ("text", "text/plain\r\nX: y", "a/b; c", 'x/y; q="\n"', "t/" + "x" * 300):
        assert not valid_media_type(bad)
