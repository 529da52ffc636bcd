"""Where the SDK finds its server and key (spec §1.1, §1.2, with hutch's own variables first)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: ``hutch serve`` listens here by default.
DEFAULT_ENDPOINT = "http://127.0.0.1:8080"

#: Appended to an endpoint root to reach the control plane (template era, spec §1.2).
API_PATH = "/v2/sandboxes"

ENDPOINT_VARS = ("HUTCH_ENDPOINT", "LANGSMITH_ENDPOINT", "LANGCHAIN_ENDPOINT")
API_KEY_VARS = ("HUTCH_API_KEY", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY")


@dataclass(frozen=True)
class ClientConfig:
    """Resolved connection settings of one client."""

    base_url: str
    api_key: str | None


def _first_set(names: tuple[str, ...], environ: Mapping[str, str]) -> str | None:
    """The first variable among ``names`` whose value is non-empty after trimming, trimmed."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def resolve_config(
    api_endpoint: str | None = None,
    api_key: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ClientConfig:
    """Resolve base URL and API key; explicit arguments win over the environment.

    ``api_endpoint`` is the full control-plane URL and is used as given (minus trailing ``/``).
    Otherwise the endpoint root comes from ``HUTCH_ENDPOINT``, ``LANGSMITH_ENDPOINT`` or
    ``LANGCHAIN_ENDPOINT`` (else :data:`DEFAULT_ENDPOINT`) and :data:`API_PATH` is appended.
    The key comes from ``api_key``, else ``HUTCH_API_KEY``, ``LANGSMITH_API_KEY`` or
    ``LANGCHAIN_API_KEY``; with none of them there is no key. Empty strings count as unset, as in
    the langsmith SDK. The environment is read on every call (no memoization).
    """
    env = os.environ if environ is None else environ
    if api_endpoint:
        base_url = api_endpoint.rstrip("/")
    else:
        root = _first_set(ENDPOINT_VARS, env) or DEFAULT_ENDPOINT
        base_url = f"{root.rstrip('/')}{API_PATH}"
    key = api_key or _first_set(API_KEY_VARS, env)
    return ClientConfig(base_url=base_url, api_key=key)
