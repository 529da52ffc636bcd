"""Sandbox data-plane calls over HTTP: /execute, /upload, /download (spec §3)."""

from __future__ import annotations

import json
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import httpx
import pytest

from hutch import (
    DataplaneNotConfiguredError,
    ResourceNotFoundError,
    SandboxClientError,
    SandboxConnectionError,
    SandboxNotReadyError,
    SandboxOperationError,
)

from .conftest import DATAPLANE, Harness, error, sandbox_json


async def ready_sandbox(h: Harness, **overrides: Any) -> Any:
    """A sandbox object as get_sandbox returns it (one request, then forgotten)."""
    handler = h.handler
    h.handler = lambda r: httpx.Response(200, json=sandbox_json(**overrides))
    sb = await h("get_sandbox", "sb-1")
    h.handler = handler
    h.requests.clear()
    return sb


def read_timeout(request: httpx.Request) -> float | None:
    timeout: dict[str, float | None] = request.extensions["timeout"]
    return timeout["read"]


async def test_run_posts_execute(make_harness: Callable[..., Harness]) -> None:
    """run() posts command, timeout and shell to {dataplane_url}/execute; HTTP timeout + 10 s."""
    h = make_harness(
        lambda r: httpx.Response(200, json={"stdout": "4\n", "stderr": "", "exit_code": 0}),
        api_key="k",
    )
    sb = await ready_sandbox(h)
    result = await h.call(sb, "run", "python -c 'print(2 + 2)'")
    assert (h.last.method, str(h.last.url)) == ("POST", f"{DATAPLANE}/execute")
    assert h.body() == {"command": "python -c 'print(2 + 2)'", "timeout": 60, "shell": "/bin/bash"}
    assert read_timeout(h.last) == 70
    assert h.last.headers["x-api-key"] == "k"
    assert (result.stdout, result.stderr, result.exit_code, result.success) == ("4\n", "", 0, True)


async def test_run_sends_env_and_cwd_when_given(make_harness: Callable[..., Harness]) -> None:
    """env is sent whenever not None (even {}), cwd likewise; shell and timeout as given."""
    h = make_harness()
    sb = await ready_sandbox(h)
    result = await h.call(
        sb, "run", "exit 1", timeout=5, env={}, cwd="/tmp", shell="/bin/sh", headers={"X-Req": "1"}
    )
    assert h.body() == {
        "command": "exit 1",
        "timeout": 5,
        "shell": "/bin/sh",
        "env": {},
        "cwd": "/tmp",
    }
    assert h.last.headers["x-req"] == "1"
    assert (result.stdout, result.stderr, result.exit_code, result.success) == ("", "", -1, False)


async def test_run_timeout_zero_waits_without_limit(make_harness: Callable[..., Harness]) -> None:
    """timeout=0 (no command limit) sends 0 and waits for the answer without an HTTP limit."""
    h = make_harness()
    sb = await ready_sandbox(h)
    await h.call(sb, "run", "sleep 100", timeout=0)
    assert h.body()["timeout"] == 0
    assert read_timeout(h.last) is None


@pytest.mark.parametrize(
    ("overrides", "cls"),
    [
        ({"status": "provisioning"}, SandboxNotReadyError),
        ({"status": None}, SandboxNotReadyError),
        ({"dataplane_url": None}, DataplaneNotConfiguredError),
        ({"dataplane_url": ""}, DataplaneNotConfiguredError),
    ],
)
async def test_dataplane_checks_before_any_call(
    make_harness: Callable[..., Harness], overrides: dict[str, Any], cls: type[Exception]
) -> None:
    """A sandbox not ready, or without data plane, fails client-side for run, write and read."""
    h = make_harness()
    sb = await ready_sandbox(h, **overrides)
    for method, args in (("run", ("ls",)), ("write", ("/x", "y")), ("read", ("/x",))):
        with pytest.raises(cls):
            await h.call(sb, method, *args)
    assert h.requests == []


async def test_write_multipart_layout(make_harness: Callable[..., Harness]) -> None:
    """write() posts one octet-stream part named "file" (filename "file"); the path is a query."""
    h = make_harness()
    sb = await ready_sandbox(h)
    await h.call(sb, "write", "/app/script.py", "print('héllo')\n", timeout=7)
    request = h.last
    assert (request.method, request.url.path) == ("POST", "/sb-1/upload")
    assert request.url.query == b"path=%2Fapp%2Fscript.py"
    assert read_timeout(request) == 7
    content_type = request.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + request.content
    )
    parts = list(message.iter_parts())
    assert len(parts) == 1
    (part,) = parts
    assert part["Content-Disposition"] == 'form-data; name="file"; filename="file"'
    assert part.get_content_type() == "application/octet-stream"
    assert part.get_payload(decode=True) == "print('héllo')\n".encode()


async def test_write_bytes_verbatim(make_harness: Callable[..., Harness]) -> None:
    """Bytes are uploaded as they are."""
    h = make_harness()
    sb = await ready_sandbox(h)
    payload = bytes(range(256))
    await h.call(sb, "write", "data.bin", payload)
    assert h.last.url.params["path"] == "data.bin"
    assert payload in h.last.content


async def test_read_returns_raw_bytes(make_harness: Callable[..., Harness]) -> None:
    """read() GETs /download?path=… and returns the body bytes whatever the content type."""
    payload = b"\x00\xff binary"
    h = make_harness(
        lambda r: httpx.Response(200, content=payload, headers={"Content-Type": "application/json"})
    )
    sb = await ready_sandbox(h)
    assert await h.call(sb, "read", "/tmp/x y") == payload
    assert (h.last.method, h.last.url.path) == ("GET", "/sb-1/download")
    assert h.last.url.params["path"] == "/tmp/x y"
    assert read_timeout(h.last) == 60


async def test_read_missing_file(make_harness: Callable[..., Harness]) -> None:
    """A 404 on download names the file and the sandbox."""
    h = make_harness(lambda r: error(404, "FileNotFound", "no such file"))
    sb = await ready_sandbox(h)
    with pytest.raises(ResourceNotFoundError) as info:
        await h.call(sb, "read", "/nope")
    assert str(info.value) == "File '/nope' not found in sandbox 'sb-1'"
    assert (info.value.resource_type, info.value.status) == ("file", 404)


async def test_dataplane_errors_are_mapped(make_harness: Callable[..., Harness]) -> None:
    """Data-plane answers go through §3.5: write, command and permission errors."""
    h = make_harness(lambda r: error(400, "WriteError", "read-only file system"))
    sb = await ready_sandbox(h)
    with pytest.raises(SandboxOperationError) as info:
        await h.call(sb, "write", "/x", b"")
    assert (info.value.operation, str(info.value)) == (
        "write",
        "read-only file system [WriteError]",
    )
    h.handler = lambda r: error(400, "CommandError", "no shell")
    with pytest.raises(SandboxOperationError) as info:
        await h.call(sb, "run", "ls")
    assert info.value.operation == "command"
    h.handler = lambda r: httpx.Response(403, json={"detail": "forbidden"})
    with pytest.raises(SandboxOperationError) as info:
        await h.call(sb, "read", "/x")
    assert info.value.error_type == "PermissionDenied"
    h.handler = lambda r: error(401, "Unauthorized", "key")
    with pytest.raises(SandboxClientError) as client_info:
        await h.call(sb, "run", "ls")
    assert type(client_info.value) is SandboxClientError


async def test_execute_timeout_is_wrapped(make_harness: Callable[..., Harness]) -> None:
    """An HTTP read timeout on /execute surfaces as SandboxConnectionError."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    h = make_harness(handler)
    sb = await ready_sandbox(h)
    with pytest.raises(SandboxConnectionError, match="timed out"):
        await h.call(sb, "run", "sleep 100", timeout=1)


async def test_execute_body_must_be_json_object(make_harness: Callable[..., Harness]) -> None:
    """A non-JSON /execute answer is a SandboxClientError, not a decode error."""
    h = make_harness(lambda r: httpx.Response(200, content=json.dumps([1]).encode()))
    sb = await ready_sandbox(h)
    with pytest.raises(SandboxClientError):
        await h.call(sb, "run", "ls")
