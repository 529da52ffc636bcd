"""The async SDK's HTTP plumbing: the retrying transport and the base of
:class:`~hutch.client._async_client.AsyncSandboxClient` (settings, sending, error mapping).

Written by hand. ``scripts/gen_sync.py`` generates the sync twin (``_sync_http.py``) from this
file: keep every async-only name in that script's replacement table, and run it after editing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self, TypeAlias

import httpx

from hutch.client import _backend
from hutch.client._config import resolve_config
from hutch.client._errors import (
    SandboxAPIError,
    SandboxClientError,
    SandboxConnectionError,
)
from hutch.client._mapping import decode_error
from hutch.client._transport import CONNECT_ERRORS, RetryPolicy
from hutch.protocol._errors import WireError

logger = logging.getLogger("hutch.client")

RequestHeaders: TypeAlias = Mapping[str, str] | None
_ErrorMapper: TypeAlias = Callable[[WireError], SandboxClientError]


class AsyncRetryTransport(httpx.AsyncBaseTransport):
    """Wraps another transport and re-sends per :class:`RetryPolicy` (spec §1.5)."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        policy: RetryPolicy,
        sleep: _backend.AsyncSleep,
    ) -> None:
        self._transport = transport
        self._policy = policy
        self._sleep = sleep

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        attempt = 0
        while True:
            delay: float | None
            try:
                response = await self._transport.handle_async_request(request)
            except CONNECT_ERRORS as exc:
                delay = self._policy.connect_error_delay(attempt)
                if delay is None:
                    raise self._policy.connect_failure(exc, request.url) from exc
                logger.debug(
                    "%s %s: %s; retrying in %.1fs", request.method, request.url, exc, delay
                )
            else:
                delay = self._policy.response_delay(attempt, response)
                if delay is None:
                    return response
                logger.debug(
                    "%s %s: status %d; retrying in %.1fs",
                    request.method,
                    request.url,
                    response.status_code,
                    delay,
                )
                await response.aclose()
            await self._sleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        await self._transport.aclose()


class AsyncHttpBase:
    """Settings and HTTP plumbing of the client; the control-plane calls are its subclass's
    (see :class:`~hutch.client._async_client.AsyncSandboxClient` for the arguments)."""

    def __init__(
        self,
        *,
        api_endpoint: str | None = None,
        timeout: float = 10.0,
        api_key: str | None = None,
        max_retries: int = 3,
        headers: RequestHeaders = None,
        _transport: httpx.AsyncBaseTransport | None = None,
        _sleep: _backend.AsyncSleep | None = None,
        _clock: _backend.Clock | None = None,
    ) -> None:
        # ``_transport``, ``_sleep`` and ``_clock`` are the fake-server and fake-time seams of the
        # unit tests; they are not public API.
        config = resolve_config(api_endpoint, api_key)
        self._base_url = config.base_url
        self._api_key = config.api_key
        self._timeout = timeout
        self._sleep = _sleep or _backend.async_sleep
        self._clock = _clock or time.monotonic
        default_headers: dict[str, str] = {}
        if config.api_key:
            default_headers["X-Api-Key"] = config.api_key
        if headers:
            default_headers.update(headers)
        # Also sent on WebSocket upgrades (httpx's own defaults, e.g. Connection, are not).
        self._default_headers = default_headers
        transport = AsyncRetryTransport(
            _transport or httpx.AsyncHTTPTransport(),
            RetryPolicy(max_retries=max_retries),
            self._sleep,
        )
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            headers=default_headers,
            # An injected transport is a fake server: keep proxy settings from bypassing it.
            trust_env=_transport is None,
        )

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- HTTP plumbing -------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        *,
        headers: RequestHeaders,
        timeout: float | None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        # ``bytes`` or a readable, seekable file object that httpx streams.
        files: Mapping[str, tuple[str, Any, str]] | None = None,
    ) -> httpx.Response:
        """Send one request (with retries); no httpx exception leaves this method."""
        try:
            return await self._http.request(
                method,
                url,
                json=json,
                params=params,
                files=files,
                headers=dict(headers) if headers else None,
                timeout=timeout,
            )
        except httpx.TimeoutException as exc:
            raise SandboxConnectionError(
                f"{method} {url} timed out after {timeout}s ({type(exc).__name__}); the server "
                "may be overloaded, or the operation needs a longer timeout"
            ) from exc
        except httpx.HTTPError as exc:
            raise SandboxConnectionError(f"{method} {url} failed: {exc}") from exc
        except httpx.InvalidURL as exc:
            raise SandboxClientError(f"Invalid URL {url!r}: {exc}") from exc

    @staticmethod
    def _raise_for_status(response: httpx.Response, mapper: _ErrorMapper) -> None:
        """Raise the mapped SDK error if ``response`` is not 2xx (3xx included, spec §1.4)."""
        if response.is_success:
            return
        request = response.request
        fallback = (
            f"{request.method} {request.url} answered {response.status_code} "
            f"{response.reason_phrase}"
        )
        if response.is_redirect:
            fallback += f" (redirect to {response.headers.get('location', '?')})"
        raise mapper(decode_error(response.status_code, response.content, fallback))

    @staticmethod
    def _json_object(response: httpx.Response) -> dict[str, Any]:
        """The JSON object body of a 2xx answer."""
        request = response.request
        try:
            data = response.json()
        except ValueError as exc:
            error = SandboxAPIError(
                f"{request.method} {request.url} answered {response.status_code} with a body "
                "that is not JSON; is api_endpoint a hutch server?"
            )
            error.status = response.status_code
            raise error from exc
        if not isinstance(data, dict):
            error = SandboxAPIError(
                f"{request.method} {request.url} answered {response.status_code} with JSON "
                f"{type(data).__name__}, expected an object"
            )
            error.status = response.status_code
            raise error
        return data

    async def _call(
        self,
        method: str,
        url: str,
        mapper: _ErrorMapper,
        *,
        headers: RequestHeaders,
        json: Any = None,
        timeout: float | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """A control-plane call: send, then map a non-2xx answer through ``mapper``.

        ``timeout=None`` here means the client's default timeout.
        """
        response = await self._send(
            method,
            url,
            headers=headers,
            json=json,
            params=params,
            timeout=self._timeout if timeout is None else timeout,
        )
        self._raise_for_status(response, mapper)
        return response

    @staticmethod
    def _items(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
        items = data.get(key)
        if not isinstance(items, list):
            return []
        return [item for item in items if isinstance(item, dict)]
