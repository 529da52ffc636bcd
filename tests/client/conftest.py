"""Fixtures of the SDK unit tests: a clean environment and a fake server at the HTTP boundary."""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from hutch import AsyncSandboxClient, SandboxClient
from hutch.client._config import API_KEY_VARS, ENDPOINT_VARS

BASE = "http://hutch.test/v2/sandboxes"
DATAPLANE = "http://dp.test/sb-1"

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No endpoint or key variables leak in from the machine running the tests."""
    for name in (*ENDPOINT_VARS, *API_KEY_VARS):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


class FakeClock:
    """A monotonic clock that only moves when the fake sleep is called."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """One sync or async client wired to a fake server; calls look the same for both."""

    def __init__(self, kind: str, handler: Handler | None = None, **client_kwargs: Any) -> None:
        self.kind = kind
        self.requests: list[httpx.Request] = []
        self.sleeps: list[float] = []
        self.clock = FakeClock()
        self.handler: Handler = handler or (lambda request: httpx.Response(200, json={}))

        def serve(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return self.handler(request)

        kwargs: dict[str, Any] = {
            "api_endpoint": BASE,
            "_transport": httpx.MockTransport(serve),
            "_clock": self.clock,
            **client_kwargs,
        }
        if kind == "sync":

            def sleep(seconds: float) -> None:
                self.sleeps.append(seconds)
                self.clock.now += seconds

            self.client: SandboxClient | AsyncSandboxClient = SandboxClient(_sleep=sleep, **kwargs)
        else:

            async def async_sleep(seconds: float) -> None:
                self.sleeps.append(seconds)
                self.clock.now += seconds

            self.client = AsyncSandboxClient(_sleep=async_sleep, **kwargs)

    async def call(self, target: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``target.method``, awaiting the result when it is a coroutine."""
        result = getattr(target, method)(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a client method."""
        return await self.call(self.client, method, *args, **kwargs)

    async def close(self) -> None:
        if isinstance(self.client, SandboxClient):
            self.client.close()
        else:
            await self.client.aclose()

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def body(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content)


@pytest.fixture(params=["sync", "async"])
async def make_harness(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Harness]]:
    """Build harnesses of the parametrized kind; closes them after the test."""
    made: list[Harness] = []

    def make(handler: Handler | None = None, **client_kwargs: Any) -> Harness:
        harness = Harness(request.param, handler, **client_kwargs)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await harness.close()


def error(status: int, error_type: str | None, message: str, **headers: str) -> httpx.Response:
    """A response carrying hutch's error envelope."""
    return httpx.Response(
        status, json={"detail": {"error": error_type, "message": message}}, headers=headers
    )


def sandbox_json(**overrides: Any) -> dict[str, Any]:
    """A ready sandbox as the server sends it."""
    data: dict[str, Any] = {
        "name": "sb-1",
        "template_name": "tpl",
        "dataplane_url": DATAPLANE,
        "id": "0000-1",
        "status": "ready",
    }
    data.update(overrides)
    return data
