"""Pure pieces of the file helpers: the Range header, reading a ranged answer, and the error
mapping of the file, download-link and service-URL calls."""

from __future__ import annotations

import pytest

from hutch import (
    ResourceNotFoundError,
    SandboxNotReadyError,
    SandboxOperationError,
    ValidationError,
)
from hutch.client._mapping import file_error, link_error
from hutch.client._models import FileChunk, range_header
from hutch.protocol._errors import ErrorType, WireError, make_error


@pytest.mark.parametrize(
    ("args", "header"),
    [
        ({"start": 0, "end": 9, "suffix_bytes": None}, "bytes=0-9"),
        ({"start": 5, "end": None, "suffix_bytes": None}, "bytes=5-"),
        ({"start": None, "end": None, "suffix_bytes": 7}, "bytes=-7"),
    ],
)
def test_range_header(args: dict[str, int | None], header: str) -> None:
    """start..end (inclusive), start.. and the last N bytes render as RFC 9110 ranges."""
    assert range_header(**args) == header


def test_chunk_from_206_200_and_304() -> None:
    """206 takes offset and total from Content-Range (``*`` total: unknown); 200 is the whole
    file from 0; 304 is unchanged with no bytes."""
    part = FileChunk.from_response(206, {"content-range": "bytes 4-6/10", "etag": '"e"'}, b"456")
    assert (part.start, part.end, part.total_bytes, part.partial, part.etag) == (
        4,
        7,
        10,
        True,
        '"e"',
    )
    odd = FileChunk.from_response(206, {"content-range": "bytes 4-6/*"}, b"456")
    assert (odd.start, odd.total_bytes) == (4, None)
    whole = FileChunk.from_response(200, {}, b"0123")
    assert (whole.start, whole.total_bytes, whole.partial) == (0, 4, False)
    same = FileChunk.from_response(304, {"etag": '"e"'}, b"")
    assert same.unchanged and same.content == b"" and same.etag == '"e"'


def test_file_error_mapping() -> None:
    """A body-less 404 (HEAD) names the path; NotFound is the sandbox; 422 is ValidationError;
    a 416 ReadError is SandboxOperationError; every error keeps its status."""
    bare = file_error(WireError(404, None, "HEAD answered 404"), path="/x", sandbox_name="sb")
    assert isinstance(bare, ResourceNotFoundError) and bare.resource_type == "file"
    assert str(bare) == "'/x' not found in sandbox 'sb'" and bare.status == 404
    gone = file_error(
        make_error(ErrorType.NOT_FOUND, "Sandbox 'i' not found"), path="/x", sandbox_name="sb"
    )
    assert isinstance(gone, ResourceNotFoundError) and gone.resource_type == "sandbox"
    bad = file_error(make_error(ErrorType.VALIDATION, "bad glob"), path="/x", sandbox_name="sb")
    assert isinstance(bad, ValidationError) and bad.status == 422
    past = file_error(
        make_error(ErrorType.READ_ERROR, "past the end", 416), path="/x", sandbox_name="sb"
    )
    assert isinstance(past, SandboxOperationError) and past.status == 416


def test_link_error_mapping() -> None:
    """A link for a stopped sandbox is SandboxNotReadyError; a 404 is no such sandbox."""
    stopped = link_error(make_error(ErrorType.NOT_READY, "stopped"), name="sb", url="u")
    assert isinstance(stopped, SandboxNotReadyError)
    missing = link_error(make_error(ErrorType.NOT_FOUND, "nope"), name="sb", url="u")
    assert isinstance(missing, ResourceNotFoundError) and missing.resource_type == "sandbox"
