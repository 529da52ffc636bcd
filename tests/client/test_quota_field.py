"""The SDK takes a quota error's type from ``detail.quota_type`` when the server sends one, and
from the message's words otherwise (older hutch servers, other servers)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hutch import QuotaExceededError
from hutch.client import _mapping

URL = "http://hutch.test/v2/sandboxes/boxes"


def _quota(detail: dict[str, Any], *, create: bool) -> QuotaExceededError:
    wire = _mapping.decode_error(429, json.dumps({"detail": detail}).encode(), "fallback")
    exc = (
        _mapping.sandbox_create_error(wire)
        if create
        else _mapping.sandbox_error(wire, op="get", name="x", url=URL)
    )
    assert isinstance(exc, QuotaExceededError) and exc.status == 429
    return exc


@pytest.mark.parametrize("create", [True, False])
@pytest.mark.parametrize(
    ("sent", "expected"),
    [("sandboxes", "sandbox_count"), ("cpu", "cpu"), ("memory", "memory"), ("gpu", "gpu")],
)
def test_the_machine_field_wins_over_the_words(create: bool, sent: str, expected: str) -> None:
    """``quota_type`` decides even when the message's words say another quota; a value the SDK
    does not know is passed on as it is."""
    detail = {"error": "QuotaExceeded", "message": "memory limit", "quota_type": sent}
    assert _quota(detail, create=create).quota_type == expected


@pytest.mark.parametrize("create", [True, False])
@pytest.mark.parametrize("sent", [None, 7, ""])
def test_without_a_usable_field_the_words_decide(create: bool, sent: object) -> None:
    """No ``quota_type`` (or one that is not a non-empty string): classified by the message."""
    detail: dict[str, Any] = {"error": "QuotaExceeded", "message": "CPU quota exceeded"}
    if sent is not None:
        detail["quota_type"] = sent
    assert _quota(detail, create=create).quota_type == "cpu"
