"""The async SDK's client: :class:`AsyncSandboxClient`, the control-plane calls.

The client's HTTP plumbing (transport, retries, sending, error mapping) is in ``_async_http.py``;
the :class:`AsyncSandbox` it returns, one sandbox's data plane, is in ``_async_sandbox.py``.

Written by hand. ``scripts/gen_sync.py`` generates the sync SDK (``_sync_client.py``) from this
file: keep every async-only name in that script's replacement table, and run it after editing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from hutch.client._async_http import AsyncHttpBase, RequestHeaders
from hutch.client._async_sandbox import AsyncSandbox
from hutch.client._async_snapshots import AsyncSnapshotsMixin, RunConfigArg
from hutch.client._errors import ResourceCreationError, ResourceTimeoutError
from hutch.client._mapping import sandbox_create_error, sandbox_error, template_error
from hutch.client._models import (
    ResourceStatus,
    SandboxTemplate,
    VolumeMountSpec,
    run_config_payload,
)


def _validate_ttl(value: int | None, name: str) -> None:
    """Sandbox TTLs are ``None`` (unset), 0 (disabled) or a positive multiple of 60 (spec §2.2)."""
    if value is None:
        return
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if value % 60 != 0:
        raise ValueError(f"{name} must be 0 or a multiple of 60 seconds, got {value}")


class AsyncSandboxClient(AsyncSnapshotsMixin, AsyncHttpBase):
    """Client of a hutch server (or any server speaking the LangSmith sandbox API).

    Example::

        async with AsyncSandboxClient() as client:
            async with await client.sandbox("python-sandbox") as sb:
                result = await sb.run("python --version")

    Args:
        api_endpoint: Full control-plane URL (``.../v2/sandboxes``). Default: ``HUTCH_ENDPOINT``
            (else ``LANGSMITH_ENDPOINT``, ``LANGCHAIN_ENDPOINT``, else ``http://127.0.0.1:8080``)
            plus ``/v2/sandboxes``.
        timeout: Default HTTP timeout in seconds.
        api_key: Sent as ``X-Api-Key``. Default: ``HUTCH_API_KEY`` (else ``LANGSMITH_API_KEY``,
            ``LANGCHAIN_API_KEY``); with none, no key is sent.
        max_retries: Re-sends on 429, 502, 503, 504 and connect errors (0 disables).
        headers: Extra headers for every HTTP request.
    """

    # -- Templates (spec §2.1) -----------------------------------------------------------------

    async def create_template(
        self,
        name: str,
        image: str,
        *,
        cpu: str = "500m",
        memory: str = "512Mi",
        storage: str | None = None,
        volume_mounts: Sequence[VolumeMountSpec] | None = None,
        network: str | None = None,
        headers: RequestHeaders = None,
    ) -> SandboxTemplate:
        """Create a template: the image and limits sandboxes are made from.

        ``network`` (a hutch extension) is ``"none"`` (loopback only) or ``"egress"`` (outbound
        access through NAT); the server's default when left out.

        Raises:
            ValidationError: The server rejected a value.
            SandboxClientError: Other failures, e.g. a duplicate name (409).
        """
        resources: dict[str, str] = {"cpu": cpu, "memory": memory}
        if storage:
            resources["storage"] = storage
        payload: dict[str, Any] = {"name": name, "image": image, "resources": resources}
        if network is not None:
            payload["network"] = network
        if volume_mounts:
            payload["volume_mounts"] = [
                {"volume_name": vm.volume_name, "mount_path": vm.mount_path} for vm in volume_mounts
            ]
        url = f"{self._base_url}/templates"
        response = await self._call(
            "POST",
            url,
            lambda w: template_error(w, op="create", name=name, url=url),
            headers=headers,
            json=payload,
        )
        return SandboxTemplate.from_dict(self._json_object(response))

    async def list_templates(self, *, headers: RequestHeaders = None) -> list[SandboxTemplate]:
        """All templates."""
        url = f"{self._base_url}/templates"
        response = await self._call(
            "GET",
            url,
            lambda w: template_error(w, op="list", name="", url=url),
            headers=headers,
        )
        data = self._json_object(response)
        return [SandboxTemplate.from_dict(item) for item in self._items(data, "templates")]

    async def get_template(self, name: str, *, headers: RequestHeaders = None) -> SandboxTemplate:
        """One template.

        Raises:
            ResourceNotFoundError: No such template (``resource_type="template"``).
        """
        url = f"{self._base_url}/templates/{name}"
        response = await self._call(
            "GET",
            url,
            lambda w: template_error(w, op="get", name=name, url=url),
            headers=headers,
        )
        return SandboxTemplate.from_dict(self._json_object(response))

    async def update_template(
        self, name: str, *, new_name: str, headers: RequestHeaders = None
    ) -> SandboxTemplate:
        """Rename a template.

        Raises:
            ResourceNotFoundError: No such template.
            ResourceNameConflictError: ``new_name`` is taken.
        """
        url = f"{self._base_url}/templates/{name}"
        response = await self._call(
            "PATCH",
            url,
            lambda w: template_error(w, op="update", name=name, url=url),
            headers=headers,
            json={"name": new_name},
        )
        return SandboxTemplate.from_dict(self._json_object(response))

    async def delete_template(self, name: str, *, headers: RequestHeaders = None) -> None:
        """Delete a template.

        Raises:
            ResourceNotFoundError: No such template.
            ResourceInUseError: Sandboxes still use it.
        """
        url = f"{self._base_url}/templates/{name}"
        await self._call(
            "DELETE",
            url,
            lambda w: template_error(w, op="delete", name=name, url=url),
            headers=headers,
        )

    # -- Sandboxes (spec §2.2) -----------------------------------------------------------------

    async def sandbox(
        self,
        template_name: str | None = None,
        *,
        snapshot_id: str | None = None,
        snapshot: str | None = None,
        name: str | None = None,
        timeout: int = 30,
        ttl_seconds: int | None = None,
        idle_ttl_seconds: int | None = None,
        run_config: RunConfigArg = None,
        labels: Mapping[str, str] | None = None,
        persistent: bool | None = None,
        headers: RequestHeaders = None,
    ) -> AsyncSandbox:
        """Create a sandbox, wait until it is ready, and delete it when its context exits::

            async with await client.sandbox("python-sandbox") as sb:
                ...

        Deletion errors on exit are ignored. Arguments as :meth:`create_sandbox`.
        """
        sb = await self.create_sandbox(
            template_name,
            snapshot_id=snapshot_id,
            snapshot=snapshot,
            name=name,
            timeout=timeout,
            ttl_seconds=ttl_seconds,
            idle_ttl_seconds=idle_ttl_seconds,
            run_config=run_config,
            labels=labels,
            persistent=persistent,
            headers=headers,
        )
        sb._auto_delete = True
        return sb

    async def create_sandbox(
        self,
        template_name: str | None = None,
        *,
        snapshot_id: str | None = None,
        snapshot: str | None = None,
        name: str | None = None,
        timeout: int = 30,
        wait_for_ready: bool = True,
        ttl_seconds: int | None = None,
        idle_ttl_seconds: int | None = None,
        run_config: RunConfigArg = None,
        labels: Mapping[str, str] | None = None,
        persistent: bool | None = None,
        vcpus: int | None = None,
        mem_bytes: int | None = None,
        fs_capacity_bytes: int | None = None,
        headers: RequestHeaders = None,
    ) -> AsyncSandbox:
        """Create a sandbox that stays until deleted.

        It is made from a template, or booted from a snapshot, or (neither given) from the
        server's default image.

        Args:
            template_name: Template to create it from.
            snapshot_id: Snapshot id to boot from.
            snapshot: Snapshot to boot from: an id, ``name:tag`` or a bare name (``name:latest``).
            name: Its name; the server generates one if omitted.
            timeout: Seconds the server may take to make it ready (with ``wait_for_ready``).
            wait_for_ready: Wait until it is ready; otherwise return at once with status
                ``"provisioning"`` (then use :meth:`wait_for_sandbox`).
            ttl_seconds: Lifetime from creation; 0 or a multiple of 60.
            idle_ttl_seconds: Lifetime without activity; 0 or a multiple of 60.
            run_config: ``user``, ``work_dir`` and ``env_vars`` over the snapshot's or image's.
            labels: Key-value labels stored with it.
            persistent: False: what it writes is thrown away at each stop (it starts again
                with the files it was created with). The server's default keeps them.
            vcpus: CPUs, over the template's or snapshot's.
            mem_bytes: Memory limit in bytes, over the template's or snapshot's.
            fs_capacity_bytes: Disk limit in bytes, over the template's or snapshot's.

        Raises:
            ValueError: Both snapshot forms, a template and a snapshot, or a TTL that is
                negative or not a multiple of 60.
            ResourceTimeoutError: Not ready within ``timeout``.
            ResourceCreationError: Provisioning failed (``error_type`` says why).
            ResourceNotFoundError: The template (``resource_type="template"``) or snapshot
                (``"snapshot"``) does not exist.
            QuotaExceededError: A quota would be exceeded.
        """
        if snapshot_id is not None and snapshot is not None:
            raise ValueError("Give snapshot_id or snapshot, not both")
        snapshot_ref = snapshot_id if snapshot_id is not None else snapshot
        if template_name is not None and snapshot_ref is not None:
            raise ValueError(
                "Give template_name or a snapshot, not both: a sandbox boots from one of them"
            )
        _validate_ttl(ttl_seconds, "ttl_seconds")
        _validate_ttl(idle_ttl_seconds, "idle_ttl_seconds")
        payload: dict[str, Any] = {"wait_for_ready": wait_for_ready}
        if template_name is not None:
            payload["template_name"] = template_name
        if snapshot_id is not None:
            payload["snapshot_id"] = snapshot_id
        if snapshot is not None:
            payload["snapshot"] = snapshot
        rc = run_config_payload(run_config)
        if rc is not None:
            payload["run_config"] = rc
        if labels:
            payload["labels"] = dict(labels)
        if persistent is not None:
            payload["persistent"] = persistent
        for key, value in (
            ("vcpus", vcpus),
            ("mem_bytes", mem_bytes),
            ("fs_capacity_bytes", fs_capacity_bytes),
        ):
            if value is not None:
                payload[key] = value
        if wait_for_ready:
            payload["timeout"] = timeout
        if name:
            payload["name"] = name
        if ttl_seconds is not None:
            payload["ttl_seconds"] = ttl_seconds
        if idle_ttl_seconds is not None:
            payload["idle_ttl_seconds"] = idle_ttl_seconds
        # The server may hold the answer for ``timeout`` seconds (spec §1.4).
        http_timeout = timeout + 30 if wait_for_ready else 30
        origin: Literal["template", "snapshot"] = "template" if snapshot_ref is None else "snapshot"
        response = await self._call(
            "POST",
            f"{self._base_url}/boxes",
            lambda w: sandbox_create_error(w, origin=origin),
            headers=headers,
            json=payload,
            timeout=http_timeout,
        )
        return AsyncSandbox.from_dict(self._json_object(response), client=self)

    async def get_sandbox(self, name: str, *, headers: RequestHeaders = None) -> AsyncSandbox:
        """One sandbox.

        Raises:
            ResourceNotFoundError: No such sandbox (``resource_type="sandbox"``).
        """
        url = f"{self._base_url}/boxes/{name}"
        response = await self._call(
            "GET",
            url,
            lambda w: sandbox_error(w, op="get", name=name, url=url),
            headers=headers,
        )
        return AsyncSandbox.from_dict(self._json_object(response), client=self)

    async def list_sandboxes(self, *, headers: RequestHeaders = None) -> list[AsyncSandbox]:
        """All sandboxes."""
        url = f"{self._base_url}/boxes"
        response = await self._call(
            "GET",
            url,
            lambda w: sandbox_error(w, op="list", name="", url=url),
            headers=headers,
        )
        data = self._json_object(response)
        return [
            AsyncSandbox.from_dict(item, client=self) for item in self._items(data, "sandboxes")
        ]

    async def update_sandbox(
        self,
        name: str,
        *,
        new_name: str | None = None,
        ttl_seconds: int | None = None,
        idle_ttl_seconds: int | None = None,
        headers: RequestHeaders = None,
    ) -> AsyncSandbox:
        """Rename a sandbox or change its TTLs (only the arguments given are sent).

        Raises:
            ValueError: A TTL is negative or not a multiple of 60.
            ResourceNotFoundError: No such sandbox.
            ResourceNameConflictError: ``new_name`` is taken.
        """
        _validate_ttl(ttl_seconds, "ttl_seconds")
        _validate_ttl(idle_ttl_seconds, "idle_ttl_seconds")
        payload: dict[str, Any] = {}
        if new_name is not None:
            payload["name"] = new_name
        if ttl_seconds is not None:
            payload["ttl_seconds"] = ttl_seconds
        if idle_ttl_seconds is not None:
            payload["idle_ttl_seconds"] = idle_ttl_seconds
        url = f"{self._base_url}/boxes/{name}"
        response = await self._call(
            "PATCH",
            url,
            lambda w: sandbox_error(w, op="update", name=name, url=url, new_name=new_name),
            headers=headers,
            json=payload,
        )
        return AsyncSandbox.from_dict(self._json_object(response), client=self)

    async def delete_sandbox(self, name: str, *, headers: RequestHeaders = None) -> None:
        """Delete a sandbox.

        Raises:
            ResourceNotFoundError: No such sandbox.
        """
        url = f"{self._base_url}/boxes/{name}"
        await self._call(
            "DELETE",
            url,
            lambda w: sandbox_error(w, op="delete", name=name, url=url),
            headers=headers,
        )

    async def get_sandbox_status(
        self, name: str, *, headers: RequestHeaders = None
    ) -> ResourceStatus:
        """A sandbox's provisioning status (cheap; meant for polling).

        Raises:
            ResourceNotFoundError: No such sandbox.
        """
        url = f"{self._base_url}/boxes/{name}/status"
        response = await self._call(
            "GET",
            url,
            lambda w: sandbox_error(w, op="status", name=name, url=url),
            headers=headers,
        )
        return ResourceStatus.from_dict(self._json_object(response))

    async def start_sandbox(
        self, name: str, *, timeout: int = 120, headers: RequestHeaders = None
    ) -> AsyncSandbox:
        """Start a stopped sandbox, its files as they were at the stop, and wait until it is
        ready (spec §8).

        Raises:
            ResourceNotFoundError: No such sandbox.
            ResourceCreationError: It failed to start.
            ResourceTimeoutError: Not ready within ``timeout`` seconds.
        """
        await self._box_action(name, "start", headers)
        return await self.wait_for_sandbox(name, timeout=timeout, headers=headers)

    async def stop_sandbox(self, name: str, *, headers: RequestHeaders = None) -> None:
        """Stop a sandbox: its commands end and its CPU and memory are freed, but its files are
        kept for :meth:`start_sandbox` (spec §8).

        Raises:
            ResourceNotFoundError: No such sandbox.
        """
        await self._box_action(name, "stop", headers)

    async def _box_action(self, name: str, action: str, headers: RequestHeaders) -> None:
        """``POST /boxes/{name}/{action}`` with ``{}``; 404 means no such sandbox (§8)."""
        url = f"{self._base_url}/boxes/{name}/{action}"
        await self._call(
            "POST",
            url,
            lambda w: sandbox_error(w, op="get", name=name, url=url),
            headers=headers,
            json={},
        )

    async def wait_for_sandbox(
        self,
        name: str,
        *,
        timeout: int = 120,
        poll_interval: float = 1.0,
        headers: RequestHeaders = None,
    ) -> AsyncSandbox:
        """Poll until the sandbox is ready, then return it (spec §2.2).

        Raises:
            ResourceCreationError: Its status became ``"failed"``.
            ResourceTimeoutError: Not ready within ``timeout`` seconds (``last_status`` set).
            ResourceNotFoundError: No such sandbox.
        """
        deadline = self._clock() + timeout
        while True:
            status = await self.get_sandbox_status(name, headers=headers)
            if status.status == "ready":
                return await self.get_sandbox(name, headers=headers)
            if status.status == "failed":
                raise ResourceCreationError(
                    status.status_message or "Sandbox provisioning failed",
                    resource_type="sandbox",
                )
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise ResourceTimeoutError(
                    f"Sandbox '{name}' not ready after {timeout}s",
                    resource_type="sandbox",
                    last_status=status.status,
                )
            await self._sleep(min(poll_interval, remaining))
