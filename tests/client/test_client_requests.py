"""What the clients send and how they read answers (spec §1.3, §1.4, §2.1, §2.2)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from hutch import (
    QuotaExceededError,
    ResourceCreationError,
    ResourceNotFoundError,
    ResourceTimeoutError,
    Sandbox,
    SandboxAPIError,
    SandboxClientError,
    VolumeMountSpec,
)

from .conftest import BASE, DATAPLANE, Harness, error, sandbox_json


def read_timeout(request: httpx.Request) -> float | None:
    timeout: dict[str, float | None] = request.extensions["timeout"]
    return timeout["read"]


# -- Headers (§1.3) -------------------------------------------------------------------------------


async def test_api_key_header_only_when_configured(make_harness: Callable[..., Harness]) -> None:
    """X-Api-Key is sent when a key is configured, and absent otherwise."""
    with_key = make_harness(api_key="secret")
    await with_key("list_templates")
    assert with_key.last.headers["x-api-key"] == "secret"
    without = make_harness()
    await without("list_templates")
    assert "x-api-key" not in without.last.headers


async def test_api_key_from_environment(
    make_harness: Callable[..., Harness], clean_env: pytest.MonkeyPatch
) -> None:
    """The key is read from HUTCH_API_KEY when the client is built."""
    clean_env.setenv("HUTCH_API_KEY", "from-env")
    h = make_harness()
    await h("list_templates")
    assert h.last.headers["x-api-key"] == "from-env"


async def test_constructor_and_per_call_headers(make_harness: Callable[..., Harness]) -> None:
    """Constructor headers go on every request; per-call headers are merged over them and win."""
    h = make_harness(api_key="k", headers={"X-Team": "a", "X-Trace": "1"})
    await h("list_templates")
    assert (h.last.headers["x-team"], h.last.headers["x-trace"]) == ("a", "1")
    await h("get_template", "tpl", headers={"X-Team": "b", "X-Api-Key": "other"})
    assert (h.last.headers["x-team"], h.last.headers["x-trace"]) == ("b", "1")
    assert h.last.headers["x-api-key"] == "other"


# -- URLs and timeouts (§1.2, §1.4) ---------------------------------------------------------------


async def test_base_url_and_paths(make_harness: Callable[..., Harness]) -> None:
    """Paths are appended to api_endpoint (trailing slash removed); names are pasted raw."""
    h = make_harness(api_endpoint=f"{BASE}/")
    await h("get_template", "my-tpl")
    assert str(h.last.url) == f"{BASE}/templates/my-tpl"
    await h("get_sandbox_status", "sb-1")
    assert str(h.last.url) == f"{BASE}/boxes/sb-1/status"


async def test_default_and_configured_timeout(make_harness: Callable[..., Harness]) -> None:
    """Control-plane calls use the client timeout (default 10 s)."""
    h = make_harness()
    await h("list_templates")
    assert read_timeout(h.last) == 10.0
    h2 = make_harness(timeout=3.5)
    await h2("list_sandboxes")
    assert read_timeout(h2.last) == 3.5


async def test_redirects_are_errors(make_harness: Callable[..., Harness]) -> None:
    """A 3xx is not followed; it is an error naming the redirect target."""
    h = make_harness(lambda r: httpx.Response(307, headers={"Location": "http://elsewhere/"}))
    with pytest.raises(SandboxClientError) as info:
        await h("list_templates")
    assert "http://elsewhere/" in str(info.value)
    assert info.value.status == 307
    assert len(h.requests) == 1


async def test_non_json_success_is_api_error(make_harness: Callable[..., Harness]) -> None:
    """A 2xx body that is not a JSON object gives SandboxAPIError, not a decode error."""
    h = make_harness(lambda r: httpx.Response(200, text="<html>proxy</html>"))
    with pytest.raises(SandboxAPIError):
        await h("get_template", "tpl")
    h.handler = lambda r: httpx.Response(200, json=[1, 2])
    with pytest.raises(SandboxAPIError):
        await h("get_template", "tpl")


# -- Templates (§2.1) -----------------------------------------------------------------------------


async def test_create_template_minimal_body(make_harness: Callable[..., Harness]) -> None:
    """create_template sends name, image and default resources; no storage or mounts."""
    h = make_harness(lambda r: httpx.Response(201, json={"name": "py", "image": "python:3"}))
    template = await h("create_template", "py", "python:3")
    assert (h.last.method, str(h.last.url)) == ("POST", f"{BASE}/templates")
    assert h.body() == {
        "name": "py",
        "image": "python:3",
        "resources": {"cpu": "500m", "memory": "512Mi"},
    }
    assert (template.name, template.image) == ("py", "python:3")


async def test_create_template_full_body(make_harness: Callable[..., Harness]) -> None:
    """Storage and volume mounts are sent when given."""
    h = make_harness()
    await h(
        "create_template",
        name="py",
        image="python:3",
        cpu="2",
        memory="1Gi",
        storage="5Gi",
        volume_mounts=[VolumeMountSpec("data", "/data")],
    )
    assert h.body() == {
        "name": "py",
        "image": "python:3",
        "resources": {"cpu": "2", "memory": "1Gi", "storage": "5Gi"},
        "volume_mounts": [{"volume_name": "data", "mount_path": "/data"}],
    }


async def test_template_list_get_update_delete(make_harness: Callable[..., Harness]) -> None:
    """The other template calls use their method, path and body."""
    h = make_harness(lambda r: httpx.Response(200, json={"templates": [{"name": "a"}, "junk"]}))
    templates = await h("list_templates")
    assert [t.name for t in templates] == ["a"]
    h.handler = lambda r: httpx.Response(200, json={})
    assert await h("list_templates") == []
    await h("update_template", "a", new_name="b")
    assert (h.last.method, str(h.last.url), h.body()) == (
        "PATCH",
        f"{BASE}/templates/a",
        {"name": "b"},
    )
    h.handler = lambda r: httpx.Response(204)
    assert await h("delete_template", "b") is None
    assert (h.last.method, str(h.last.url)) == ("DELETE", f"{BASE}/templates/b")


async def test_template_not_found(make_harness: Callable[..., Harness]) -> None:
    """A missing template is ResourceNotFoundError(template) with its status."""
    h = make_harness(lambda r: error(404, "NotFound", "no"))
    with pytest.raises(ResourceNotFoundError) as info:
        await h("get_template", "ghost")
    assert info.value.resource_type == "template"
    assert info.value.status == 404
    assert "'ghost'" in str(info.value)


# -- Sandboxes (§2.2) -----------------------------------------------------------------------------


async def test_create_sandbox_waiting_body(make_harness: Callable[..., Harness]) -> None:
    """A waiting create sends template, wait flag and timeout; HTTP timeout is timeout + 30."""
    h = make_harness(lambda r: httpx.Response(201, json=sandbox_json()))
    sb = await h("create_sandbox", "tpl")
    assert (h.last.method, str(h.last.url)) == ("POST", f"{BASE}/boxes")
    assert h.body() == {"template_name": "tpl", "wait_for_ready": True, "timeout": 30}
    assert read_timeout(h.last) == 60
    assert (sb.name, sb.template_name, sb.dataplane_url, sb.status) == (
        "sb-1",
        "tpl",
        DATAPLANE,
        "ready",
    )


async def test_create_sandbox_optional_fields(make_harness: Callable[..., Harness]) -> None:
    """Name and TTLs are sent when set; without waiting, no timeout and a 30 s HTTP timeout."""
    h = make_harness(lambda r: httpx.Response(202, json=sandbox_json(status="provisioning")))
    sb = await h(
        "create_sandbox",
        "tpl",
        name="mine",
        timeout=99,
        wait_for_ready=False,
        ttl_seconds=0,
        idle_ttl_seconds=600,
    )
    assert h.body() == {
        "template_name": "tpl",
        "wait_for_ready": False,
        "name": "mine",
        "ttl_seconds": 0,
        "idle_ttl_seconds": 600,
    }
    assert read_timeout(h.last) == 30
    assert sb.status == "provisioning"


@pytest.mark.parametrize(
    ("field", "value"),
    [("ttl_seconds", -60), ("ttl_seconds", 90), ("idle_ttl_seconds", 1), ("idle_ttl_seconds", -1)],
)
async def test_ttl_checked_client_side(
    make_harness: Callable[..., Harness], field: str, value: int
) -> None:
    """TTLs must be 0 or a positive multiple of 60; bad ones never reach the server."""
    h = make_harness()
    with pytest.raises(ValueError, match=field):
        await h("create_sandbox", "tpl", **{field: value})
    with pytest.raises(ValueError, match=field):
        await h("update_sandbox", "sb-1", **{field: value})
    assert h.requests == []


async def test_create_sandbox_error_mapping(make_harness: Callable[..., Harness]) -> None:
    """Create answers go through the create table (408, 422, 404 template)."""
    h = make_harness(lambda r: error(408, "Timeout", "still provisioning"))
    with pytest.raises(ResourceTimeoutError):
        await h("create_sandbox", "tpl")
    h.handler = lambda r: error(422, "ImagePull", "no such image")
    with pytest.raises(ResourceCreationError, match=r"\[ImagePull\]"):
        await h("create_sandbox", "tpl")
    h.handler = lambda r: error(404, "NotFound", "Template 'tpl' not found")
    with pytest.raises(ResourceNotFoundError) as info:
        await h("create_sandbox", "tpl")
    assert info.value.resource_type == "template"


async def test_sandbox_model_defaults(make_harness: Callable[..., Harness]) -> None:
    """A sandbox object with no fields reads as ready, with no data plane."""
    h = make_harness(lambda r: httpx.Response(200, json={}))
    sb = await h("get_sandbox", "x")
    assert (sb.name, sb.template_name, sb.status, sb.dataplane_url) == ("", "", "ready", None)
    assert (sb.id, sb.ttl_seconds, sb.idle_ttl_seconds, sb.expires_at) == (None, None, None, None)
    h.handler = lambda r: httpx.Response(200, json={"status": None})
    assert (await h("get_sandbox", "x")).status is None


async def test_sandbox_list_update_delete_status(make_harness: Callable[..., Harness]) -> None:
    """The other sandbox calls use their method, path and body; update may send {}."""
    h = make_harness(lambda r: httpx.Response(200, json={"sandboxes": [sandbox_json()]}))
    boxes = await h("list_sandboxes")
    assert [b.name for b in boxes] == ["sb-1"]
    assert "_client" not in repr(boxes[0])
    h.handler = lambda r: httpx.Response(200, json=sandbox_json(name="new"))
    await h("update_sandbox", "sb-1")
    assert (h.last.method, str(h.last.url), h.body()) == ("PATCH", f"{BASE}/boxes/sb-1", {})
    await h("update_sandbox", "sb-1", new_name="new", ttl_seconds=120, idle_ttl_seconds=0)
    assert h.body() == {"name": "new", "ttl_seconds": 120, "idle_ttl_seconds": 0}
    h.handler = lambda r: httpx.Response(200, json={"status": "failed", "status_message": "oom"})
    status = await h("get_sandbox_status", "sb-1")
    assert (status.status, status.status_message) == ("failed", "oom")
    h.handler = lambda r: httpx.Response(204)
    await h("delete_sandbox", "sb-1")
    assert (h.last.method, str(h.last.url)) == ("DELETE", f"{BASE}/boxes/sb-1")


async def test_list_sandboxes_404_is_api_error(make_harness: Callable[..., Harness]) -> None:
    """A 404 on the sandbox list points at a wrong api_endpoint."""
    h = make_harness(lambda r: httpx.Response(404))
    with pytest.raises(SandboxAPIError, match="api_endpoint"):
        await h("list_sandboxes")


async def test_quota_on_create(make_harness: Callable[..., Harness]) -> None:
    """A quota refusal surfaces after the retries with its quota type."""
    h = make_harness(
        lambda r: error(429, "QuotaExceeded", "Sandbox count limit reached", **{"Retry-After": "0"})
    )
    with pytest.raises(QuotaExceededError) as info:
        await h("create_sandbox", "tpl")
    assert info.value.quota_type == "sandbox_count"


# -- wait_for_sandbox (§2.2) ----------------------------------------------------------------------


def status_then_box(*statuses: str | None) -> Callable[[httpx.Request], httpx.Response]:
    queue = list(statuses)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status"):
            status = queue.pop(0) if len(queue) > 1 else queue[0]
            return httpx.Response(200, json={} if status is None else {"status": status})
        return httpx.Response(200, json=sandbox_json())

    return handler


async def test_wait_for_sandbox_polls_until_ready(make_harness: Callable[..., Harness]) -> None:
    """Status is polled every poll_interval (missing and unknown statuses keep polling)."""
    h = make_harness(status_then_box(None, "stopped", "ready"))
    sb = await h("wait_for_sandbox", "sb-1", poll_interval=0.5)
    assert sb.status == "ready"
    assert h.sleeps == [0.5, 0.5]
    assert [r.url.path for r in h.requests][-1] == "/v2/sandboxes/boxes/sb-1"


async def test_wait_for_sandbox_failed(make_harness: Callable[..., Harness]) -> None:
    """A failed status raises ResourceCreationError with the server's message."""
    h = make_harness(
        lambda r: httpx.Response(200, json={"status": "failed", "status_message": "image pull"})
    )
    with pytest.raises(ResourceCreationError, match="image pull") as info:
        await h("wait_for_sandbox", "sb-1")
    assert info.value.resource_type == "sandbox"
    h.handler = lambda r: httpx.Response(200, json={"status": "failed"})
    with pytest.raises(ResourceCreationError, match="Sandbox provisioning failed"):
        await h("wait_for_sandbox", "sb-1")


async def test_wait_for_sandbox_times_out(make_harness: Callable[..., Harness]) -> None:
    """Past the deadline it raises ResourceTimeoutError with the last status; sleeps are clipped."""
    h = make_harness(status_then_box("provisioning"))
    with pytest.raises(ResourceTimeoutError) as info:
        await h("wait_for_sandbox", "sb-1", timeout=3, poll_interval=2.0)
    assert str(info.value) == "Sandbox 'sb-1' not ready after 3s (last_status: provisioning)"
    assert h.sleeps == [2.0, 1.0]


# -- Context managers -----------------------------------------------------------------------------


async def test_sandbox_context_deletes_on_exit(make_harness: Callable[..., Harness]) -> None:
    """client.sandbox() creates with waiting and deletes on exit, ignoring delete errors."""
    h = make_harness(lambda r: httpx.Response(201, json=sandbox_json()))
    sb = await h("sandbox", "tpl", name="sb-1", ttl_seconds=60)
    assert h.body() == {
        "template_name": "tpl",
        "wait_for_ready": True,
        "timeout": 30,
        "name": "sb-1",
        "ttl_seconds": 60,
    }
    h.handler = lambda r: error(500, "InternalError", "cannot delete")
    if isinstance(sb, Sandbox):
        with sb as inside:
            assert inside is sb
    else:
        async with sb as inside:
            assert inside is sb
    assert (h.last.method, str(h.last.url)) == ("DELETE", f"{BASE}/boxes/sb-1")


async def test_created_sandbox_context_keeps_it(make_harness: Callable[..., Harness]) -> None:
    """A sandbox from create_sandbox() is not deleted by its context; delete() deletes it."""
    h = make_harness(lambda r: httpx.Response(201, json=sandbox_json()))
    sb = await h("create_sandbox", "tpl")
    if isinstance(sb, Sandbox):
        with sb:
            pass
    else:
        async with sb:
            pass
    assert len(h.requests) == 1
    await h.call(sb, "delete")
    assert (h.last.method, str(h.last.url)) == ("DELETE", f"{BASE}/boxes/sb-1")


async def test_client_context_manager_closes() -> None:
    """Both clients close their HTTP connections when their context exits."""
    from hutch import AsyncSandboxClient, SandboxClient

    with SandboxClient(api_endpoint=BASE) as client:
        assert not client._http.is_closed
    assert client._http.is_closed
    async with AsyncSandboxClient(api_endpoint=BASE) as aclient:
        assert not aclient._http.is_closed
    assert aclient._http.is_closed
