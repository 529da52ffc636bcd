"""Retry policy of spec §1.5, alone and driven by the client over a fake server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from hutch import (
    QuotaExceededError,
    ResourceCreationError,
    SandboxAPIError,
    SandboxClientError,
    SandboxConnectionError,
)
from hutch.client._transport import RetryPolicy, backoff, parse_retry_after

from .conftest import Harness, error, sandbox_json


def test_backoff_grows_and_caps() -> None:
    """Backoff is 2**attempt plus jitter, capped at 10 s."""
    assert [backoff(a, 0.5) for a in range(5)] == [1.5, 2.5, 4.5, 8.5, 10.0]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2", 2.0),
        ("0.5", 0.5),
        ("0", 0.0),
        ("-3", 0.0),
        (None, 1.0),
        ("soon", 1.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 1.0),
        ("nan", 1.0),
        ("inf", 1.0),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float) -> None:
    """Retry-After is float seconds; negative is 0; missing, non-numeric or infinite is 1."""
    assert parse_retry_after(value) == seconds


def response(status: int, **headers: str) -> httpx.Response:
    return httpx.Response(status, headers=headers)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_policy_retries_gateway_errors_three_times(status: int) -> None:
    """5xx gateway errors are re-sent after 1-2, 2-3, 4-5 s; the fourth answer is final."""
    policy = RetryPolicy(max_retries=3, jitter=lambda: 0.25)
    delays = [policy.response_delay(a, response(status)) for a in range(4)]
    assert delays == [1.25, 2.25, 4.25, None]


def test_policy_rate_limit_uses_retry_after_uncapped() -> None:
    """429 waits Retry-After * 2**attempt plus jitter, without the 10 s cap."""
    policy = RetryPolicy(jitter=lambda: 0.5)
    limited = response(429, **{"Retry-After": "10"})
    assert [policy.response_delay(a, limited) for a in range(4)] == [10.5, 20.5, 40.5, None]
    assert policy.response_delay(0, response(429)) == 1.5


@pytest.mark.parametrize("status", [200, 201, 204, 301, 400, 404, 408, 409, 422, 500, 501])
def test_policy_does_not_retry_other_statuses(status: int) -> None:
    """Only 429, 502, 503 and 504 are re-sent."""
    assert RetryPolicy().response_delay(0, response(status)) is None


def test_policy_connect_errors_and_attempt_count() -> None:
    """Connect errors back off like 5xx; max_retries=0 means a single attempt."""
    policy = RetryPolicy(max_retries=3, jitter=lambda: 0.0)
    assert [policy.connect_error_delay(a) for a in range(4)] == [1.0, 2.0, 4.0, None]
    assert policy.attempts == 4
    assert RetryPolicy(max_retries=0).attempts == 1
    assert RetryPolicy(max_retries=0).connect_error_delay(0) is None
    assert RetryPolicy(max_retries=-2).attempts == 1


def sequence(*answers: httpx.Response | Exception) -> Callable[[httpx.Request], httpx.Response]:
    """A handler giving each answer in turn (raising exceptions), repeating the last."""
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler


async def test_client_retries_then_succeeds(make_harness: Callable[..., Harness]) -> None:
    """Two 503s then success: three identical POSTs and two backoff sleeps."""
    h = make_harness(
        sequence(
            error(503, None, "busy"),
            error(503, None, "busy"),
            httpx.Response(201, json=sandbox_json()),
        )
    )
    sb = await h("create_sandbox", "tpl")
    assert sb.name == "sb-1"
    assert len(h.requests) == 3
    assert len({r.content for r in h.requests}) == 1
    assert len(h.sleeps) == 2
    assert 1.0 <= h.sleeps[0] <= 2.0
    assert 2.0 <= h.sleeps[1] <= 3.0


async def test_client_maps_last_response_after_retries(
    make_harness: Callable[..., Harness],
) -> None:
    """After four 503s the last answer goes to the mapping: Unschedulable on create."""
    h = make_harness(sequence(error(503, None, "no nodes")))
    with pytest.raises(ResourceCreationError) as info:
        await h("create_sandbox", "tpl")
    assert info.value.error_type == "Unschedulable"
    assert info.value.status == 503
    assert len(h.requests) == 4
    assert len(h.sleeps) == 3
    assert 4.0 <= h.sleeps[2] <= 5.0


async def test_client_rate_limit_retry_after_zero(make_harness: Callable[..., Harness]) -> None:
    """429 with Retry-After 0 waits only the jitter, then maps to QuotaExceededError."""
    h = make_harness(sequence(error(429, "QuotaExceeded", "cpu quota", **{"Retry-After": "0"})))
    with pytest.raises(QuotaExceededError) as info:
        await h("list_templates")
    assert info.value.quota_type == "cpu"
    assert len(h.requests) == 4
    assert all(0.0 <= s <= 1.0 for s in h.sleeps)


async def test_max_retries_zero_sends_once(make_harness: Callable[..., Harness]) -> None:
    """max_retries=0 disables re-sending."""
    h = make_harness(sequence(error(502, None, "bad gateway")), max_retries=0)
    with pytest.raises(SandboxClientError):
        await h("list_templates")
    assert (len(h.requests), h.sleeps) == (1, [])


async def test_non_retryable_status_is_not_resent(make_harness: Callable[..., Harness]) -> None:
    """A 500 is mapped at once."""
    h = make_harness(sequence(error(500, "InternalError", "boom")))
    with pytest.raises(SandboxAPIError):
        await h("list_templates")
    assert len(h.requests) == 1


@pytest.mark.parametrize("exc", [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow")])
async def test_connect_errors_retried_then_wrapped(
    make_harness: Callable[..., Harness], exc: Exception
) -> None:
    """Connect failures on every attempt give SandboxConnectionError naming the attempt count."""
    h = make_harness(sequence(exc))
    with pytest.raises(SandboxConnectionError) as info:
        await h("get_template", "tpl")
    assert str(info.value).startswith("Failed to connect to server after 4 attempts: ")
    assert isinstance(info.value.__cause__, type(exc))
    assert len(h.requests) == 4
    assert len(h.sleeps) == 3


async def test_connect_error_then_success(make_harness: Callable[..., Harness]) -> None:
    """A connect error followed by an answer is invisible to the caller."""
    h = make_harness(sequence(httpx.ConnectError("refused"), httpx.Response(200, json={})))
    template = await h("get_template", "tpl")
    assert template.image == "unknown"
    assert len(h.requests) == 2


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("slow"),
        httpx.WriteTimeout("slow"),
        httpx.PoolTimeout("busy"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("garbage"),
    ],
)
async def test_other_transport_errors_wrapped_not_retried(
    make_harness: Callable[..., Harness], exc: Exception
) -> None:
    """Other httpx errors are not re-sent and surface as SandboxConnectionError."""
    h = make_harness(sequence(exc))
    with pytest.raises(SandboxConnectionError) as info:
        await h("list_sandboxes")
    assert isinstance(info.value.__cause__, httpx.HTTPError)
    assert len(h.requests) == 1


async def test_invalid_url_is_wrapped(make_harness: Callable[..., Harness]) -> None:
    """A URL httpx cannot build is a SandboxClientError, not an httpx exception."""
    h = make_harness(api_endpoint="http://[::1")
    with pytest.raises(SandboxClientError) as info:
        await h("list_templates")
    exc: Any = info.value
    assert not isinstance(exc, httpx.HTTPError)
