"""normalize_reference: canonical image names and clear rejections."""

from __future__ import annotations

import pytest

from hutch.runtime.images import ImageError, normalize_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("busybox", "busybox:latest"),
        ("local/busybox", "local/busybox:latest"),
        ("  local/busybox:1.36 \n", "local/busybox:1.36"),
        ("Local/BusyBox", "local/busybox:latest"),
        ("Local/Py:3.11-Slim", "local/py:3.11-Slim"),
        ("registry.example.com:5000/team/app", "registry.example.com:5000/team/app:latest"),
        ("LOCALHOST:5000/a/b:v1", "localhost:5000/a/b:v1"),
        ("my-org/my_app.v2__x", "my-org/my_app.v2__x:latest"),
        (f"app@{DIGEST}", f"app@{DIGEST}"),
        (f"app:v1@{DIGEST.upper().replace('SHA256', 'sha256')}", f"app:v1@{DIGEST}"),
    ],
)
def test_normalize_reference_canonical_forms(name: str, expected: str) -> None:
    """Names are stripped, lowercased outside the tag, and get :latest only without tag/digest."""
    assert normalize_reference(name) == expected


def test_normalize_reference_is_idempotent() -> None:
    """Normalizing a canonical name returns it unchanged."""
    for name in ("busybox", "Local/Py:3.11-Slim", f"a/b@{DIGEST}"):
        once = normalize_reference(name)
        assert normalize_reference(once) == once


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a b", "whitespace"),
        ("a\tb:c", "whitespace"),
        ("a//b", "empty path component"),
        ("a/", "empty path component"),
        ("/a", "empty path component"),
        (":tag", "repository part is empty"),
        ("a:", "not a valid tag"),
        ("a:-x", "not a valid tag"),
        ("a:" + "t" * 129, "not a valid tag"),
        ("a:b:c", "is not allowed"),
        ("-a", "is not allowed"),
        ("a/../b", "is not allowed"),
        ("a$b", "is not allowed"),
        ("a@sha256:xyz", "not a digest"),
        ("a@", "not a digest"),
        ("x" * 256, "longer than 255"),
        ("bad_host.com:port/a", "registry host"),
    ],
)
def test_normalize_reference_rejects_implausible_names(name: str, fragment: str) -> None:
    """Implausible names raise ImageError whose message says what is wrong."""
    with pytest.raises(ImageError) as excinfo:
        normalize_reference(name)
    assert fragment in str(excinfo.value)
    assert repr(name) in str(excinfo.value)
