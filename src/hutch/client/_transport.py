"""Retry policy of every HTTP request the SDK sends (spec §1.5).

The policy does no I/O: given an attempt number and what happened, it says how long to wait before
sending again, or that it is time to stop. The httpx transports that drive it are
``AsyncRetryTransport`` in ``_async_http.py`` and its generated sync twin ``RetryTransport`` in
``_sync_http.py``; they live there so the sync one is generated along with the client.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from hutch.client._errors import SandboxConnectionError

#: Statuses re-sent with exponential backoff.
RETRYABLE_STATUSES = frozenset({502, 503, 504})
#: Status re-sent after its ``Retry-After``.
RATE_LIMITED = 429
#: Backoff cap for 5xx and connect errors, in seconds (not applied to 429).
MAX_BACKOFF = 10.0
#: Errors where nothing reached the server, so sending again is always safe. (langsmith 0.7.31
#: retries only ``ConnectError``; 0.15.1 also retries connect timeouts, as we do.)
CONNECT_ERRORS: tuple[type[httpx.TransportError], ...] = (httpx.ConnectError, httpx.ConnectTimeout)


def backoff(attempt: int, jitter: float) -> float:
    """``min(2.0**attempt + jitter, MAX_BACKOFF)`` seconds."""
    return min(2.0**attempt + jitter, MAX_BACKOFF)


def parse_retry_after(value: str | None) -> float:
    """``Retry-After`` as seconds: negative gives 0; missing, non-numeric or not finite gives 1."""
    if value is None:
        return 1.0
    try:
        seconds = float(value)
    except ValueError:
        return 1.0
    if not math.isfinite(seconds):
        return 1.0
    return max(seconds, 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """When to send a request again.

    Attributes:
        max_retries: Re-sends after the first attempt (3 means up to 4 attempts; <0 counts as 0).
        jitter: Source of the ``U(0, 1)`` term, injectable for tests.
    """

    max_retries: int = 3
    jitter: Callable[[], float] = random.random

    @property
    def attempts(self) -> int:
        """Total number of attempts."""
        return max(self.max_retries, 0) + 1

    def _last(self, attempt: int) -> bool:
        return attempt + 1 >= self.attempts

    def response_delay(self, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before re-sending after ``response``; ``None`` returns it as is.

        ``attempt`` counts from 0. The last attempt's response is always returned, so the caller
        maps it like any other error.
        """
        if self._last(attempt):
            return None
        status = response.status_code
        if status in RETRYABLE_STATUSES:
            return backoff(attempt, self.jitter())
        if status == RATE_LIMITED:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            return retry_after * 2.0**attempt + self.jitter()
        return None

    def connect_error_delay(self, attempt: int) -> float | None:
        """Seconds to wait before re-sending after a connect error; ``None`` means give up."""
        if self._last(attempt):
            return None
        return backoff(attempt, self.jitter())

    def connect_failure(self, exc: Exception, url: object) -> SandboxConnectionError:
        """The error raised once connecting failed on every attempt."""
        return SandboxConnectionError(
            f"Failed to connect to server after {self.attempts} attempts: {exc} ({url}); "
            "check that the hutch server is running and the endpoint is right"
        )
