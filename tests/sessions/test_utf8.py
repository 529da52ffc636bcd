"""Byte-exact UTF-8: hold-back of unfinished characters, one ``?`` per invalid byte."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from hutch.sessions._log import Cursor, OutputLog
from hutch.sessions._utf8 import Utf8Splitter, decode, incomplete_tail, pieces


def test_incomplete_tail_finds_unfinished_characters() -> None:
    """Only a valid but unfinished trailing sequence is held back."""
    assert incomplete_tail("ü".encode()[:1]) == 1
    assert incomplete_tail(b"a" + "€".encode()[:2]) == 2
    assert incomplete_tail(b"a" + "😀".encode()[:3]) == 3
    assert incomplete_tail("ü€😀".encode()) == 0
    assert incomplete_tail(b"\xe0\x80") == 0  # overlong prefix: invalid, not unfinished
    assert incomplete_tail(b"\xff") == 0
    assert incomplete_tail(b"\x80\x80\x80") == 0
    assert incomplete_tail(b"") == 0


def test_invalid_bytes_decode_one_question_mark_each() -> None:
    """Each invalid byte becomes one ``?``, so encoded length equals the byte count."""
    raw = b"\xffab\xc3(\xe2\x82"
    assert decode(raw) == "?ab?(??"
    surrogate = b"\xed\xa0\x80"
    assert decode(surrogate) == "???"


def test_splitter_never_splits_a_character() -> None:
    """Feeding ``ü€😀`` byte by byte yields whole characters only."""
    splitter = Utf8Splitter()
    out = [splitter.feed(bytes([b])) for b in "ü€😀".encode()]
    assert [decode(b) for b in out if b] == ["ü", "€", "😀"]
    assert splitter.flush() == b""


@given(st.text(), st.integers(min_value=4, max_value=40))
def test_pieces_of_valid_text_are_whole_characters(s: str, size: int) -> None:
    """Splitting valid UTF-8 into bounded pieces keeps every character whole."""
    data = s.encode()
    parts = list(pieces(data, size))
    assert all(len(p) <= size for p in parts)
    assert "".join(p.decode("utf-8") for p in parts) == s


@st.composite
def chunked_bytes(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """Random bytes mixing valid multi-byte UTF-8 and invalid bytes, randomly chunked."""
    parts = draw(st.lists(st.one_of(st.text(max_size=8).map(str.encode), st.binary(max_size=8))))
    data = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(chunked_bytes(), st.integers(min_value=4, max_value=64), st.integers(0, 3))
def test_random_chunkings_reassemble_byte_exactly(
    sample: tuple[bytes, list[bytes]], max_event: int, start: int
) -> None:
    """Any chunking, through splitter, log and cursor: texts add up to the bytes, contiguously."""
    data, chunks = sample
    log = OutputLog(1 << 20)
    splitter = Utf8Splitter()
    for chunk in [*chunks, None]:
        emit = splitter.flush() if chunk is None else splitter.feed(chunk)
        if emit:
            log.append("stdout", emit)
    start = min(start, len(data))
    cursor = Cursor(log, stdout_offset=start, max_event_bytes=max_event)
    position, texts = start, []
    while (out := cursor.next()) is not None:
        assert out.offset == position
        assert len(out.data.encode()) <= max_event
        position += len(out.data.encode())
        texts.append(out.data)
    assert position == len(data)
    assert len("".join(texts).encode()) == len(data) - start
    if start == 0:
        # Chunk boundaries change nothing: the same text as decoding everything at once.
        assert "".join(texts) == decode(data)
