"""Endpoints the SDKs know but hutch does not implement yet answer 501 naming the feature."""

from __future__ import annotations

import pytest

from tests.conftest import Server

pytestmark = pytest.mark.root


@pytest.mark.parametrize(
    ("method", "path", "feature"),
    [
        ("POST", "/volumes", "Volumes"),
        ("GET", "/volumes/v1", "Volumes"),
        ("DELETE", "/volumes/v1", "Volumes"),
        ("POST", "/pools", "Pools"),
        ("PATCH", "/pools/p1", "Pools"),
    ],
)
def test_unimplemented_feature_is_501(server: Server, method: str, path: str, feature: str) -> None:
    """501 with error NotImplemented and the feature's name: never a 404 an SDK would misread."""
    with server.http() as http:
        for prefix in ("/v2/sandboxes", "/api/v2/sandboxes"):
            r = http.request(method, prefix + path, json={})
            assert r.status_code == 501, r.text
            assert r.json()["detail"]["error"] == "NotImplemented"
            assert r.json()["detail"]["message"].startswith(feature)
    with server.http(key="wrong") as http:
        assert http.request(method, "/v2/sandboxes" + path, json={}).status_code == 401
