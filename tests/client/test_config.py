"""Endpoint and key resolution (spec §1.1, §1.2; hutch variables first)."""

from __future__ import annotations

import pytest

from hutch.client._config import DEFAULT_ENDPOINT, resolve_config


def test_defaults_to_local_hutch_server() -> None:
    """With nothing set, the SDK talks to ``hutch serve``'s default address without a key."""
    config = resolve_config()
    assert config.base_url == f"{DEFAULT_ENDPOINT}/v2/sandboxes"
    assert config.api_key is None


def test_explicit_arguments_win(clean_env: pytest.MonkeyPatch) -> None:
    """``api_endpoint`` is used as-is (minus a trailing slash); ``api_key`` beats any variable."""
    clean_env.setenv("HUTCH_ENDPOINT", "http://env:1")
    clean_env.setenv("HUTCH_API_KEY", "env-key")
    config = resolve_config("http://explicit:2/custom/path/", "arg-key")
    assert config.base_url == "http://explicit:2/custom/path"
    assert config.api_key == "arg-key"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HUTCH_ENDPOINT": "http://h:1", "LANGSMITH_ENDPOINT": "http://l:2"}, "http://h:1"),
        ({"HUTCH_ENDPOINT": "  ", "LANGSMITH_ENDPOINT": "http://l:2"}, "http://l:2"),
        ({"LANGSMITH_ENDPOINT": "", "LANGCHAIN_ENDPOINT": "http://c:3"}, "http://c:3"),
        ({"LANGSMITH_ENDPOINT": "http://l:2/", "LANGCHAIN_ENDPOINT": "http://c:3"}, "http://l:2"),
        ({"LANGSMITH_ENDPOINT": "https://x/api/v1"}, "https://x/api/v1"),
    ],
)
def test_endpoint_variables_in_order(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    """The first non-blank endpoint variable wins and ``/v2/sandboxes`` is appended."""
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert resolve_config().base_url == f"{expected}/v2/sandboxes"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HUTCH_API_KEY": "h", "LANGSMITH_API_KEY": "l"}, "h"),
        ({"HUTCH_API_KEY": " ", "LANGSMITH_API_KEY": "l", "LANGCHAIN_API_KEY": "c"}, "l"),
        ({"LANGCHAIN_API_KEY": "c"}, "c"),
        ({"LANGSMITH_API_KEY": "  "}, None),
    ],
)
def test_api_key_variables_in_order(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], expected: str | None
) -> None:
    """The first non-blank key variable wins; blank ones mean no key."""
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert resolve_config().api_key == expected


def test_empty_explicit_arguments_fall_back_to_environment(clean_env: pytest.MonkeyPatch) -> None:
    """Empty strings count as not given, as in the langsmith SDK."""
    clean_env.setenv("HUTCH_ENDPOINT", "http://h:1")
    clean_env.setenv("HUTCH_API_KEY", "k")
    config = resolve_config("", "")
    assert (config.base_url, config.api_key) == ("http://h:1/v2/sandboxes", "k")


def test_environment_is_read_at_each_resolution(clean_env: pytest.MonkeyPatch) -> None:
    """Changing a variable affects the next client: nothing is memoized."""
    clean_env.setenv("HUTCH_ENDPOINT", "http://first:1")
    assert resolve_config().base_url.startswith("http://first:1")
    clean_env.setenv("HUTCH_ENDPOINT", "http://second:2")
    assert resolve_config().base_url.startswith("http://second:2")
