"""The snapshot calls of :class:`~hutch.client._async_client.AsyncSandboxClient` (spec §9.1).

Written by hand. ``scripts/gen_sync.py`` generates the sync twin (``_sync_snapshots.py``) from
this file: keep every async-only name in that script's replacement table, and run it after editing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import quote

from hutch.client import _backend
from hutch.client._errors import (
    ResourceCreationError,
    ResourceTimeoutError,
    SandboxClientError,
)
from hutch.client._mapping import capture_error, generic_error, snapshot_error
from hutch.client._models import RunConfig, Snapshot, SnapshotTag, run_config_payload
from hutch.protocol._errors import WireError

if TYPE_CHECKING:
    import httpx

RequestHeaders: TypeAlias = Mapping[str, str] | None
RunConfigArg: TypeAlias = RunConfig | Mapping[str, Any] | None


def _segment(ref: str) -> str:
    """A snapshot reference as one path segment: ``name:tag`` stays readable, ``/``, ``?`` and
    ``#`` cannot change the path."""
    return quote(ref, safe=":")


class AsyncSnapshotsMixin:
    """Snapshot methods; the client class provides the HTTP plumbing declared here."""

    _base_url: str
    _timeout: float
    _sleep: _backend.AsyncSleep
    _clock: _backend.Clock

    if TYPE_CHECKING:

        async def _call(
            self,
            method: str,
            url: str,
            mapper: Callable[[WireError], SandboxClientError],
            *,
            headers: RequestHeaders,
            json: Any = None,
            timeout: float | None = None,
            params: Mapping[str, str] | None = None,
        ) -> httpx.Response: ...

        @staticmethod
        def _json_object(response: httpx.Response) -> dict[str, Any]: ...

        @staticmethod
        def _items(data: dict[str, Any], key: str) -> list[dict[str, Any]]: ...

    async def create_snapshot(
        self,
        name: str,
        docker_image: str,
        fs_capacity_bytes: int,
        *,
        tag: str | None = None,
        registry_id: str | None = None,
        run_config: RunConfigArg = None,
        timeout: int = 60,
        headers: RequestHeaders = None,
    ) -> Snapshot:
        """Build a snapshot from an image and wait until it is ready.

        Args:
            name: Its name.
            docker_image: The image (pulled by the server if it does not have it).
            fs_capacity_bytes: Disk limit of sandboxes booted from it.
            tag: Tag to publish it under within ``name`` (moves an existing one); default: the
                image's own tag, else ``latest``.
            registry_id: A private registry of the workspace to pull from.
            run_config: ``user``, ``work_dir`` and ``env_vars`` over the image's.
            timeout: Seconds to wait for it to be ready.

        Raises:
            ResourceCreationError: The build failed (``resource_type="snapshot"``).
            ResourceTimeoutError: Not ready within ``timeout`` seconds.
            ValidationError: The server rejected a value.
        """
        payload: dict[str, Any] = {
            "name": name,
            "docker_image": docker_image,
            "fs_capacity_bytes": fs_capacity_bytes,
        }
        if tag is not None:
            payload["tag"] = tag
        if registry_id is not None:
            payload["registry_id"] = registry_id
        rc = run_config_payload(run_config)
        if rc is not None:
            payload["run_config"] = rc
        # The server holds the answer a few seconds while the build runs (spec §9.1).
        response = await self._call(
            "POST",
            f"{self._base_url}/snapshots",
            generic_error,
            headers=headers,
            json=payload,
            timeout=max(self._timeout, 30.0),
        )
        snapshot = Snapshot.from_dict(self._json_object(response))
        return await self._settled(snapshot, timeout=timeout, headers=headers)

    async def capture_snapshot(
        self,
        sandbox_name: str,
        name: str,
        *,
        tag: str | None = None,
        fs_capacity_bytes: int | None = None,
        run_config: RunConfigArg = None,
        timeout: int = 60,
        headers: RequestHeaders = None,
    ) -> Snapshot:
        """Keep a sandbox's files (running or stopped) as a new snapshot; wait until ready.

        Args:
            sandbox_name: The sandbox to capture.
            name: The snapshot's name.
            tag: Tag to publish it under within ``name``; default ``latest``.
            fs_capacity_bytes: Disk limit of sandboxes booted from it; default the sandbox's.
            run_config: Applied over what the sandbox ran with.
            timeout: Seconds to wait for it to be ready.

        Raises:
            ResourceNotFoundError: No such sandbox (``resource_type="sandbox"``).
            ResourceCreationError: The capture failed.
            ResourceTimeoutError: Not ready within ``timeout`` seconds.
        """
        payload: dict[str, Any] = {"name": name}
        if tag is not None:
            payload["tag"] = tag
        if fs_capacity_bytes is not None:
            payload["fs_capacity_bytes"] = fs_capacity_bytes
        rc = run_config_payload(run_config)
        if rc is not None:
            payload["run_config"] = rc
        url = f"{self._base_url}/boxes/{sandbox_name}/snapshot"
        response = await self._call(
            "POST",
            url,
            lambda w: capture_error(w, sandbox_name=sandbox_name, url=url),
            headers=headers,
            json=payload,
            timeout=max(self._timeout, 30.0),
        )
        snapshot = Snapshot.from_dict(self._json_object(response))
        return await self._settled(snapshot, timeout=timeout, headers=headers)

    async def _settled(
        self, snapshot: Snapshot, *, timeout: int, headers: RequestHeaders
    ) -> Snapshot:
        """``snapshot`` if the answer already said ready, else polled until it is (every 2 s,
        as langsmith's create calls)."""
        if snapshot.status == "ready":
            return snapshot
        return await self.wait_for_snapshot(snapshot.id, timeout=timeout, headers=headers)

    async def get_snapshot(self, snapshot_id: str, *, headers: RequestHeaders = None) -> Snapshot:
        """One snapshot, by id, ``name:tag`` or a bare name (``name:latest``, else the newest
        ready snapshot of that name).

        Raises:
            ResourceNotFoundError: No such snapshot (``resource_type="snapshot"``).
        """
        url = f"{self._base_url}/snapshots/{_segment(snapshot_id)}"
        response = await self._call(
            "GET",
            url,
            lambda w: snapshot_error(w, ref=snapshot_id, url=url),
            headers=headers,
        )
        return Snapshot.from_dict(self._json_object(response))

    async def list_snapshots(
        self,
        *,
        name_contains: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        headers: RequestHeaders = None,
    ) -> list[Snapshot]:
        """One page of snapshots, newest first.

        Args:
            name_contains: Case-insensitive substring of the names to keep.
            limit: Page size, 1 to 500 (server default 50): one call may not return them all.
            offset: How many to skip.
        """
        params: dict[str, str] = {}
        if name_contains is not None:
            params["name_contains"] = name_contains
        if limit is not None:
            params["limit"] = str(limit)
        if offset is not None:
            params["offset"] = str(offset)
        url = f"{self._base_url}/snapshots"
        response = await self._call(
            "GET",
            url,
            lambda w: snapshot_error(w, ref="", url=url),
            headers=headers,
            params=params,
        )
        data = self._json_object(response)
        return [Snapshot.from_dict(item) for item in self._items(data, "snapshots")]

    async def list_snapshot_tags(
        self, name: str, *, headers: RequestHeaders = None
    ) -> list[SnapshotTag]:
        """Every tag published under ``name`` (no tag in it) and the snapshot each points at.

        Raises:
            ResourceNotFoundError: Nothing was ever published under ``name``.
            ValidationError: ``name`` carries a tag.
        """
        url = f"{self._base_url}/snapshots-by-name/{quote(name, safe='')}"
        response = await self._call(
            "GET",
            url,
            lambda w: snapshot_error(w, ref=name, url=url),
            headers=headers,
        )
        return [
            SnapshotTag.from_dict(item) for item in self._items(self._json_object(response), "tags")
        ]

    async def delete_snapshot(self, snapshot_id: str, *, headers: RequestHeaders = None) -> None:
        """Delete a snapshot (by id or reference) and its tags; sandboxes booted from it keep
        their files.

        Raises:
            ResourceNotFoundError: No such snapshot.
        """
        url = f"{self._base_url}/snapshots/{_segment(snapshot_id)}"
        await self._call(
            "DELETE",
            url,
            lambda w: snapshot_error(w, ref=snapshot_id, url=url),
            headers=headers,
        )

    async def wait_for_snapshot(
        self,
        snapshot_id: str,
        *,
        timeout: int = 300,
        poll_interval: float = 2.0,
        headers: RequestHeaders = None,
    ) -> Snapshot:
        """Poll until the snapshot is ready, then return it.

        Raises:
            ResourceCreationError: Its status became ``"failed"`` (``resource_type="snapshot"``).
            ResourceTimeoutError: Not ready within ``timeout`` seconds (``last_status`` set).
            ResourceNotFoundError: No such snapshot.
        """
        deadline = self._clock() + timeout
        while True:
            snapshot = await self.get_snapshot(snapshot_id, headers=headers)
            if snapshot.status == "ready":
                return snapshot
            if snapshot.status == "failed":
                raise ResourceCreationError(
                    snapshot.status_message or "Snapshot build failed", resource_type="snapshot"
                )
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise ResourceTimeoutError(
                    f"Snapshot '{snapshot_id}' not ready after {timeout}s",
                    resource_type="snapshot",
                    last_status=snapshot.status,
                )
            await self._sleep(min(poll_interval, remaining))
