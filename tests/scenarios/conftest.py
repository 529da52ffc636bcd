"""Fixtures of the SDK scenarios: a Python template, shared sandboxes and an async client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from hutch import AsyncSandbox, AsyncSandboxClient, Sandbox, SandboxClient
from tests.conftest import Server


@pytest.fixture(scope="session")
def python_template(server: Server, client: SandboxClient, python_tar: Path) -> str:
    """A template ``py-scen`` on the Debian bookworm image with python3 (``local/python:3.11``)."""
    server.import_image("local/python:3.11", python_tar)
    client.create_template(name="py-scen", image="local/python:3.11")
    return "py-scen"


@pytest.fixture(scope="module")
def py_sb(client: SandboxClient, python_template: str) -> Iterator[Sandbox]:
    """A Python sandbox shared by a module's tests."""
    with client.sandbox(template_name=python_template) as sb:
        yield sb


@pytest.fixture(scope="module")
def bb_sb(client: SandboxClient, bb_template: str) -> Iterator[Sandbox]:
    """A busybox sandbox shared by a module's tests."""
    with client.sandbox(template_name=bb_template) as sb:
        yield sb


@pytest_asyncio.fixture(loop_scope="function")
async def aclient(server: Server) -> AsyncIterator[AsyncSandboxClient]:
    """An async client of the test server, on the test's own event loop."""
    async with AsyncSandboxClient(api_endpoint=server.base, api_key=server.key) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="function")
async def abb_sb(aclient: AsyncSandboxClient, bb_sb: Sandbox) -> AsyncSandbox:
    """The shared busybox sandbox, seen through the async client."""
    return await aclient.get_sandbox(bb_sb.name)


@pytest_asyncio.fixture(loop_scope="function")
async def apy_sb(aclient: AsyncSandboxClient, py_sb: Sandbox) -> AsyncSandbox:
    """The shared Python sandbox, seen through the async client."""
    return await aclient.get_sandbox(py_sb.name)
