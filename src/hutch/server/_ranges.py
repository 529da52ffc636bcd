"""HTTP validators, conditional requests and byte ranges for file downloads (RFC 9110 §8.8,
§13, §14), without I/O: the download endpoints feed in headers and a file's stat and act on the
:class:`Plan` they get back.

Only single ranges are served as 206. A multi-range request (``bytes=0-1,5-6``) is answered with
the whole file (200), which RFC 9110 §14.2 allows and every client must accept; it spares the
server ``multipart/byteranges``. Syntactically invalid ``Range`` headers are ignored the same way.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import re
import urllib.parse
from dataclasses import dataclass
from email.utils import formatdate
from typing import Literal

__all__ = [
    "ByteRange",
    "Plan",
    "content_disposition",
    "content_type_for",
    "etag_for",
    "last_modified_for",
    "plan",
    "valid_media_type",
]

_SINGLE = re.compile(r"\s*bytes\s*=\s*(\d{0,19})\s*-\s*(\d{0,19})\s*", re.ASCII)
#: RFC 9110 media type: type "/" subtype *( OWS ";" OWS parameter ), parameters token=token or
#: token=quoted-string. Nothing else reaches a response header.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(
    rf"{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=({_TOKEN}|\"[^\"\\\x00-\x1f\x7f]*\"))*", re.ASCII
)


def etag_for(st: os.stat_result) -> str:
    """A strong ETag for a file version: a hash of its device, inode, size and mtime (ns).

    Any write through the kernel changes the mtime (ns resolution), a rename-over changes the
    inode; the hash keeps the numbers themselves private.
    """
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


def last_modified_for(mtime: float) -> str:
    """HTTP-date (IMF-fixdate, second resolution)."""
    return formatdate(mtime, usegmt=True)


def content_type_for(path: str) -> str:
    """Guessed from the file name; ``application/octet-stream`` when unknown."""
    guessed, encoding = mimetypes.guess_type(path, strict=False)
    if guessed is None or encoding is not None:
        # ``x.tar.gz`` guesses as application/x-tar with gzip encoding: the bytes are gzip.
        return "application/octet-stream"
    return guessed


def valid_media_type(value: str) -> bool:
    return len(value) <= 255 and _MEDIA_TYPE.fullmatch(value) is not None


def content_disposition(kind: Literal["attachment", "inline"], filename: str) -> str:
    """``attachment; filename="…"; filename*=UTF-8''…`` (RFC 6266 / 8187).

    The quoted ``filename`` is an ASCII fallback with every character a header could choke on
    (quotes, backslashes, controls, non-ASCII) replaced by ``_``; ``filename*`` carries the
    real name percent-encoded.
    """
    fallback = (
        "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\%' else "_" for c in filename)
        or "download"
    )
    encoded = urllib.parse.quote(filename, safe="")
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


@dataclass(frozen=True)
class ByteRange:
    """Inclusive ``first``..``last`` of a file of ``size`` bytes."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.size}"


@dataclass(frozen=True)
class Plan:
    """What to answer: 304 (``not_modified``), 416 (``unsatisfiable``), 206 (``range`` set),
    or the whole file."""

    not_modified: bool = False
    unsatisfiable: bool = False
    range: ByteRange | None = None


def _etags(header: str) -> list[str]:
    return [t.strip().removeprefix("W/") for t in header.split(",") if t.strip()]


def _none_match(header: str, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 §13.1.2)."""
    if header.strip() == "*":
        return True
    return etag.removeprefix("W/") in _etags(header)


def _if_range_holds(header: str, etag: str, last_modified: str) -> bool:
    """If-Range: strong comparison of an ETag, or an exact HTTP-date match (§13.1.5)."""
    value = header.strip()
    if value.startswith(('"', "W/")):
        return value == etag  # a weak validator never matches here
    return value == last_modified


def _parse_range(header: str, size: int) -> ByteRange | Literal["ignore", "unsatisfiable"]:
    if "," in header:
        return "ignore"  # multiple ranges: the whole file (see the module docstring)
    m = _SINGLE.fullmatch(header)
    if m is None:
        return "ignore"
    first_s, last_s = m.groups()
    if not first_s:
        if not last_s:
            return "ignore"  # "bytes=-"
        suffix = int(last_s)
        if suffix == 0:
            return "unsatisfiable"
        if size == 0:
            return "ignore"  # an empty file has no last N bytes; send it whole (empty)
        return ByteRange(max(0, size - suffix), size - 1, size)
    first = int(first_s)
    if last_s and int(last_s) < first:
        return "ignore"  # invalid per RFC 9110 §14.1.1
    if first >= size:
        return "unsatisfiable"
    last = min(int(last_s), size - 1) if last_s else size - 1
    return ByteRange(first, last, size)


def plan(
    *,
    method: str,
    size: int,
    etag: str,
    last_modified: str,
    range_header: str | None,
    if_range: str | None,
    if_none_match: str | None,
) -> Plan:
    """Evaluate a download request's preconditions and range in RFC 9110 §13.2.2 order."""
    if if_none_match is not None and _none_match(if_none_match, etag):
        return Plan(not_modified=True)
    if method != "GET" or range_header is None:
        return Plan()  # Range only applies to GET (§14.2)
    if if_range is not None and not _if_range_holds(if_range, etag, last_modified):
        return Plan()  # the file changed: the whole new version, so the client restarts
    parsed = _parse_range(range_header, size)
    if parsed == "ignore":
        return Plan()
    if parsed == "unsatisfiable":
        return Plan(unsatisfiable=True)
    return Plan(range=parsed)
