"""Byte-exact UTF-8 text for output events (spec §4.3, §10.10).

The wire carries ``data`` as text plus a byte ``offset``; the client computes the next offset as
``offset + len(data.encode("utf-8"))``. Two rules keep that arithmetic exact:

* Chunks are cut at character boundaries: an incomplete trailing sequence (at most 3 bytes that
  could still become a valid character) is held back until more bytes arrive or the stream ends
  (:class:`Utf8Splitter`, :func:`pieces`).
* Bytes that are not valid UTF-8 decode as **one ``"?"`` per invalid byte** (error handler
  :data:`ERRORS`), never as U+FFFD, whose UTF-8 form is 3 bytes and would make offsets drift.
  So the text of ``n`` stream bytes always encodes back to exactly ``n`` bytes.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator

#: Name of the codec error handler that turns each invalid byte into one ``"?"``.
ERRORS = "hutch-byte-per-char"


def _one_char_per_byte(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    # Resume right after the first offending byte: CPython may report a multi-byte range
    # (a truncated sequence), but each byte must become exactly one 1-byte character.
    return "?", exc.start + 1


codecs.register_error(ERRORS, _one_char_per_byte)


def decode(data: bytes) -> str:
    """Decode stream bytes; ``len(decode(b).encode("utf-8")) == len(b)`` for every ``b``."""
    return data.decode("utf-8", ERRORS)


def _is_lead(byte: int) -> bool:
    return 0xC2 <= byte <= 0xF4


def incomplete_tail(data: bytes | bytearray | memoryview) -> int:
    """Length (0–3) of a trailing sequence that is a valid but unfinished UTF-8 character."""
    n = len(data)
    for k in range(1, min(3, n) + 1):
        if _is_lead(data[n - k]):
            # With final=False the strict decoder consumes nothing and raises nothing exactly
            # when the bytes are a proper prefix of a valid character.
            try:
                _, consumed = codecs.utf_8_decode(bytes(data[n - k :]), "strict", False)
            except UnicodeDecodeError:
                return 0
            return k if consumed == 0 else 0
        if not 0x80 <= data[n - k] <= 0xBF:
            return 0  # ASCII or an invalid byte: no character can span it
    return 0


class Utf8Splitter:
    """Cuts a byte stream into chunks that end at character boundaries.

    Feed reads with :meth:`feed`; each returns the bytes that can be emitted now. At end of
    stream, :meth:`flush` returns what was held back (it then decodes as one ``"?"`` per byte).
    """

    def __init__(self) -> None:
        self._held = b""

    @property
    def held(self) -> int:
        """Bytes held back (0–3)."""
        return len(self._held)

    def feed(self, data: bytes) -> bytes:
        if self._held:
            data = self._held + data
        k = incomplete_tail(data)
        if k:
            self._held, data = data[-k:], data[:-k]
        else:
            self._held = b""
        return data

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


def pieces(data: bytes, max_bytes: int) -> Iterator[bytes]:
    """Split ``data`` into pieces of at most ``max_bytes`` bytes, never inside a character."""
    if max_bytes < 4:
        raise ValueError("max_bytes must be at least 4 (the longest UTF-8 character)")
    start = 0
    while start < len(data):
        end = piece_end(data, start, max_bytes)
        yield data[start:end]
        start = end


def piece_end(data: bytes, start: int, max_bytes: int) -> int:
    """End of the piece of ``data`` that starts at ``start`` (see :func:`pieces`)."""
    end = start + max_bytes
    if end >= len(data):
        return len(data)
    return end - incomplete_tail(memoryview(data)[start:end])
