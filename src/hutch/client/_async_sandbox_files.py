"""The file, download-link and service-URL methods of
:class:`~hutch.client._async_sandbox.AsyncSandbox`, and :class:`AsyncServiceURL`.

Written by hand. ``scripts/gen_sync.py`` generates the sync twin (``_sync_sandbox_files.py``)
from this file: keep every async-only name in that script's replacement table, and run it
after editing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Literal, TypeAlias

import httpx

from hutch.client._errors import (
    DataplaneNotConfiguredError,
    SandboxClientError,
    SandboxNotReadyError,
)
from hutch.client._mapping import dataplane_error, download_error, file_error, link_error
from hutch.client._models import (
    DownloadURL,
    FileChunk,
    FileStat,
    GlobResult,
    GrepResult,
    range_header,
)
from hutch.protocol._errors import WireError

if TYPE_CHECKING:
    from hutch.client._async_client import AsyncSandboxClient

RequestHeaders: TypeAlias = Mapping[str, str] | None
_ErrorMapper: TypeAlias = Callable[[WireError], SandboxClientError]
#: Called with the bytes of a file sent so far (again from 0 if a retry sends it anew).
UploadProgress: TypeAlias = Callable[[int], None]

#: The header a service URL's token travels in (what the server's service proxy reads).
SERVICE_TOKEN_HEADER: Final = "X-Langsmith-Sandbox-Service-Token"
#: A token with less than this many seconds left is renewed before it is used (langsmith's 30).
REFRESH_MARGIN: Final = 30.0
MAX_SERVICE_SECONDS: Final = 86400


class AsyncServiceURL:
    """Signed, expiring access to an HTTP service listening on a port inside a sandbox.

    Made by :meth:`AsyncSandbox.service`. ``service_url``, ``browser_url``, ``token`` and
    ``expires_at`` are the current values and never touch the network; the ``get_*()``
    accessors and the request helpers first renew a token that has less than
    :data:`REFRESH_MARGIN` seconds left (the same port and lifetime, asked of the server
    again), so a long-lived object keeps working::

        svc = await sb.service(8000)
        r = await svc.get("/api/health")     # <service_url>api/health, token header added
        print(await svc.get_browser_url())   # open in a browser: sets a cookie, no key needed

    The helpers send the token, never the client's API key, and open one connection per
    request (``httpx``); use ``service_url`` and ``token`` with your own HTTP client to keep
    connections.
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        *,
        sandbox: AsyncSandboxFilesMixin,
        port: int,
        expires_in_seconds: int,
        headers: RequestHeaders = None,
    ) -> None:
        self._sandbox = sandbox
        self.port = port
        self._expires_in_seconds = expires_in_seconds
        self._headers = dict(headers) if headers else None
        # One renewal at a time: concurrent requests near expiry share it.
        self._lock = asyncio.Lock()
        self._set(data)

    def _set(self, data: Mapping[str, Any]) -> None:
        self._service_url = str(data.get("service_url", ""))
        self._browser_url = str(data.get("browser_url", ""))
        self._token = str(data.get("token", ""))
        self._expires_at = str(data.get("expires_at", ""))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(service_url={self._service_url!r}, "
            f"expires_at={self._expires_at!r})"
        )

    @property
    def service_url(self) -> str:
        """Base URL of the service (ends with ``/``); requests need the token header."""
        return self._service_url

    @property
    def browser_url(self) -> str:
        """URL to open in a browser: it sets a cookie scoped to the service, then redirects
        to ``service_url``."""
        return self._browser_url

    @property
    def token(self) -> str:
        """The token, for the ``X-Langsmith-Sandbox-Service-Token`` header."""
        return self._token

    @property
    def expires_at(self) -> str:
        """When the token expires (ISO 8601, UTC)."""
        return self._expires_at

    @property
    def expires_in(self) -> float:
        """Seconds the token has left (negative once expired; 0 if the expiry is unreadable)."""
        try:
            expires = datetime.fromisoformat(self._expires_at)
        except ValueError:
            return 0.0
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return (expires - datetime.now(UTC)).total_seconds()

    async def refresh(self) -> None:
        """Get a new token (and URLs) now, whatever the current one has left."""
        async with self._lock:
            await self._renew()

    async def _renew(self) -> None:
        self._set(
            await self._sandbox._service_url_fields(
                self.port, self._expires_in_seconds, self._headers
            )
        )

    async def _fresh(self) -> None:
        async with self._lock:
            if self.expires_in <= REFRESH_MARGIN:
                await self._renew()

    async def get_token(self) -> str:
        """The token, renewed first if it is about to expire."""
        await self._fresh()
        return self._token

    async def get_service_url(self) -> str:
        """``service_url``, renewed first if the token is about to expire."""
        await self._fresh()
        return self._service_url

    async def get_browser_url(self) -> str:
        """``browser_url``, renewed first if the token is about to expire."""
        await self._fresh()
        return self._browser_url

    async def get_expires_at(self) -> str:
        """``expires_at``, renewed first if the token is about to expire."""
        await self._fresh()
        return self._expires_at

    async def request(self, method: str, path: str = "/", **kwargs: Any) -> httpx.Response:
        """Send one HTTP request to ``path`` under the service, with the token header.

        ``kwargs`` go to ``httpx`` (``params``, ``json``, ``content``, ``headers``,
        ``timeout`` (default: the client's), ``follow_redirects``, …). The whole answer is read
        before it is returned; the service's status is not turned into an exception (a 502
        from the server means nothing listens on the port, see the README).

        Raises:
            SandboxClientError: The token could not be renewed (e.g. the sandbox is gone).
            httpx.HTTPError: The request itself failed.
        """
        await self._fresh()
        url = self._service_url.rstrip("/") + "/" + path.lstrip("/")
        headers = dict(kwargs.pop("headers", None) or {})
        headers[SERVICE_TOKEN_HEADER] = self._token
        kwargs.setdefault("timeout", self._sandbox._client._timeout)
        async with httpx.AsyncClient() as http:
            return await http.request(method, url, headers=headers, **kwargs)

    async def get(self, path: str = "/", **kwargs: Any) -> httpx.Response:
        """``request("GET", path, ...)``."""
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str = "/", **kwargs: Any) -> httpx.Response:
        """``request("POST", path, ...)``."""
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str = "/", **kwargs: Any) -> httpx.Response:
        """``request("PUT", path, ...)``."""
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str = "/", **kwargs: Any) -> httpx.Response:
        """``request("PATCH", path, ...)``."""
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str = "/", **kwargs: Any) -> httpx.Response:
        """``request("DELETE", path, ...)``."""
        return await self.request("DELETE", path, **kwargs)


class _Reporting:
    """A binary file for httpx's multipart body that reports its position after each read.

    httpx seeks it to 0 and reads it in 64 KiB chunks as the body is sent, so the file is never
    whole in memory; it learns the length by seeking to the end (for ``Content-Length``).
    """

    def __init__(self, file: BinaryIO, progress: UploadProgress | None) -> None:
        self._file = file
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        if self._progress is not None:
            self._progress(self._file.tell())
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


class AsyncSandboxFilesMixin:
    """File methods of a sandbox, and the data-plane plumbing all its methods use; the sandbox
    class provides the attributes declared here."""

    name: str
    status: str | None
    dataplane_url: str | None
    _client: AsyncSandboxClient

    def _require_dataplane_url(self) -> str:
        """The data-plane URL, after the client-side checks of spec §3.1."""
        if self.status != "ready":
            raise SandboxNotReadyError(
                f"Sandbox '{self.name}' is not ready (status: {self.status}); get a ready copy "
                f"with wait_for_sandbox('{self.name}')"
            )
        if not self.dataplane_url:
            raise DataplaneNotConfiguredError(
                f"Sandbox '{self.name}' has no dataplane_url, so it cannot run commands or "
                "access files; the server must report a data-plane URL"
            )
        return self.dataplane_url

    async def _dataplane(
        self,
        method: str,
        path: str,
        mapper: _ErrorMapper,
        *,
        headers: RequestHeaders,
        timeout: float | None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        files: Mapping[str, tuple[str, bytes | _Reporting, str]] | None = None,
    ) -> httpx.Response:
        """A data-plane call (spec §3): checks, send, map a non-2xx answer."""
        url = f"{self._require_dataplane_url()}{path}"
        response = await self._client._send(
            method, url, headers=headers, timeout=timeout, json=json, params=params, files=files
        )
        self._client._raise_for_status(response, mapper)
        return response

    def _file_mapper(self, path: str) -> _ErrorMapper:
        return lambda w: file_error(w, path=path, sandbox_name=self.name)

    async def write(
        self,
        path: str,
        content: str | bytes | BinaryIO,
        *,
        timeout: int = 60,
        progress: UploadProgress | None = None,
        headers: RequestHeaders = None,
    ) -> None:
        """Write a file (creating parent directories; ``str`` is UTF-8 encoded).

        Relative paths resolve from the sandbox's home directory. ``content`` may be a binary
        file open for reading and seekable (e.g. ``open(p, "rb")``): it is sent from its start,
        chunk by chunk as the request goes out, so memory stays bounded whatever its size.
        ``progress`` is called with the bytes sent so far as they go (not at all for ``str``
        or ``bytes`` content).

        Raises:
            SandboxOperationError: The write failed (``operation="write"``).
        """
        data: bytes | _Reporting
        if isinstance(content, str):
            data = content.encode("utf-8")
        elif isinstance(content, bytes):
            data = content
        else:
            data = _Reporting(content, progress)
        await self._dataplane(
            "POST",
            "/upload",
            dataplane_error,
            headers=headers,
            timeout=timeout,
            params={"path": path},
            files={"file": ("file", data, "application/octet-stream")},
        )

    async def read(self, path: str, *, timeout: int = 60, headers: RequestHeaders = None) -> bytes:
        """Read a file's bytes.

        Raises:
            ResourceNotFoundError: No such file (``resource_type="file"``).
            SandboxOperationError: The read failed (``operation="read"``).
        """
        response = await self._dataplane(
            "GET",
            "/download",
            lambda w: download_error(w, path=path, sandbox_name=self.name),
            headers=headers,
            timeout=timeout,
            params={"path": path},
        )
        return response.content

    async def stat(
        self, path: str, *, timeout: int = 60, headers: RequestHeaders = None
    ) -> FileStat:
        """A file's size and validators, without its bytes (``HEAD /download``).

        Raises:
            ResourceNotFoundError: No such file (``resource_type="file"``).
            SandboxOperationError: It is not a regular file, or cannot be read.
        """
        response = await self._dataplane(
            "HEAD",
            "/download",
            self._file_mapper(path),
            headers=headers,
            timeout=timeout,
            params={"path": path},
        )
        return FileStat.from_headers(response.headers)

    async def read_range(
        self,
        path: str,
        *,
        start: int | None = None,
        end: int | None = None,
        suffix_bytes: int | None = None,
        if_range: str | None = None,
        if_none_match: str | None = None,
        timeout: int = 60,
        headers: RequestHeaders = None,
    ) -> FileChunk:
        """Read part of a file: bytes ``start``..``end`` (inclusive; ``end`` past the end of the
        file is clamped), from ``start`` to the end, or the last ``suffix_bytes``.

        ``if_range`` (an ``etag``) keeps a resumed read consistent: if the file changed, the
        whole new file comes back with ``partial=False``. ``if_none_match`` (an ``etag``)
        answers ``unchanged=True`` with no bytes while the file still matches.

        Raises:
            ValueError: No range, ``suffix_bytes`` with ``start``/``end``, or a bad range.
            SandboxOperationError: ``start`` is past the end of the file (status 416).
            ResourceNotFoundError: No such file (``resource_type="file"``).
        """
        extra = {
            **(headers or {}),
            "Range": range_header(start=start, end=end, suffix_bytes=suffix_bytes),
        }
        if if_range:
            extra["If-Range"] = if_range
        if if_none_match:
            extra["If-None-Match"] = if_none_match
        url = f"{self._require_dataplane_url()}/download"
        response = await self._client._send(
            "GET", url, headers=extra, timeout=timeout, params={"path": path}
        )
        if response.status_code != 304:  # "unchanged" is an answer here, not an error
            self._client._raise_for_status(response, self._file_mapper(path))
        return FileChunk.from_response(response.status_code, response.headers, response.content)

    async def glob(
        self,
        pattern: str,
        path: str,
        *,
        limit: int | None = None,
        timeout: int = 60,
        headers: RequestHeaders = None,
    ) -> GlobResult:
        """Files and directories below ``path`` whose path relative to it matches ``pattern``.

        ``**`` spans any number of directories; ``*``, ``?`` and ``[...]`` match within one
        name (``*`` also matches names starting with a dot). Symlinks are listed, never
        followed. At most ``limit`` matches (server default 1000, at most 10 000): check
        ``truncated`` before treating the answer as complete.

        Raises:
            ResourceNotFoundError: ``path`` does not exist (``resource_type="file"``).
            ValidationError: A bad pattern (absolute, with ``..``, empty) or ``limit`` < 1.
            SandboxOperationError: ``path`` is not a directory.
        """
        payload: dict[str, Any] = {"pattern": pattern, "path": path}
        if limit is not None:
            payload["limit"] = limit
        return GlobResult.from_dict(await self._search("/glob", payload, timeout, headers))

    async def ls(
        self,
        path: str,
        *,
        limit: int | None = None,
        timeout: int = 60,
        headers: RequestHeaders = None,
    ) -> GlobResult:
        """The entries of one directory, not recursing (``glob("*", path)``)."""
        return await self.glob("*", path, limit=limit, timeout=timeout, headers=headers)

    async def grep(
        self,
        pattern: str,
        path: str,
        *,
        glob: str | None = None,
        limit: int | None = None,
        timeout: int = 60,
        headers: RequestHeaders = None,
    ) -> GrepResult:
        """Lines holding the **literal** text ``pattern`` in files below ``path``.

        ``glob`` picks the files: a bare ``*.py`` by name at any depth, a pattern with ``/`` or
        ``**`` by path relative to ``path``. Binary files are skipped. At most ``limit``
        matches; the server also bounds bytes read and time: check ``truncated``.

        Raises:
            ResourceNotFoundError: ``path`` does not exist (``resource_type="file"``).
            ValidationError: An empty or multi-line ``pattern``, a bad ``glob``, ``limit`` < 1.
        """
        payload: dict[str, Any] = {"pattern": pattern, "path": path}
        if glob is not None:
            payload["glob"] = glob
        if limit is not None:
            payload["limit"] = limit
        return GrepResult.from_dict(await self._search("/grep", payload, timeout, headers))

    async def _search(
        self, endpoint: str, payload: dict[str, Any], timeout: int, headers: RequestHeaders
    ) -> dict[str, Any]:
        response = await self._dataplane(
            "POST",
            endpoint,
            self._file_mapper(payload["path"]),
            headers=headers,
            timeout=timeout,
            json=payload,
        )
        return self._client._json_object(response)

    async def generate_download_url(
        self,
        path: str,
        *,
        expires_in_seconds: int | None = None,
        content_type: str | None = None,
        content_disposition: Literal["attachment", "inline"] | None = None,
        headers: RequestHeaders = None,
    ) -> DownloadURL:
        """A link that serves the file at ``path`` to anyone holding it, with no API key
        (GET, HEAD and ``Range``), until ``expires_in_seconds`` pass (never, if None).

        The file need not exist yet; the link is pinned to the path, not to the contents.
        ``content_type`` and ``content_disposition`` set the headers the file is served with.

        Raises:
            ValueError: ``expires_in_seconds`` is below 1.
            ResourceNotFoundError: No such sandbox.
            ValidationError: A bad path or content type.
        """
        if expires_in_seconds is not None and expires_in_seconds < 1:
            raise ValueError(
                f"expires_in_seconds must be at least 1 (got {expires_in_seconds}); leave it "
                "out for a link that never expires"
            )
        payload: dict[str, Any] = {"path": path}
        if expires_in_seconds is not None:
            payload["expires_in_seconds"] = expires_in_seconds
        if content_type is not None:
            payload["content_type"] = content_type
        if content_disposition is not None:
            payload["content_disposition"] = content_disposition
        return DownloadURL.from_dict(await self._box_link("download-url", payload, headers))

    async def service(
        self,
        port: int,
        *,
        expires_in_seconds: int = 600,
        headers: RequestHeaders = None,
    ) -> AsyncServiceURL:
        """Signed access to the service listening on ``port`` inside this sandbox (see
        :class:`AsyncServiceURL`); the token lives ``expires_in_seconds`` (1..86400) and is
        renewed by the object's helpers as it runs out.

        Raises:
            ValueError: ``port`` or ``expires_in_seconds`` out of range.
            ResourceNotFoundError: No such sandbox.
            SandboxNotReadyError: The sandbox is not running.
        """
        if not 1 <= port <= 65535:
            raise ValueError(f"port must be between 1 and 65535 (got {port})")
        if not 1 <= expires_in_seconds <= MAX_SERVICE_SECONDS:
            raise ValueError(
                f"expires_in_seconds must be between 1 and {MAX_SERVICE_SECONDS} "
                f"(got {expires_in_seconds})"
            )
        data = await self._service_url_fields(port, expires_in_seconds, headers)
        return AsyncServiceURL(
            data, sandbox=self, port=port, expires_in_seconds=expires_in_seconds, headers=headers
        )

    async def _service_url_fields(
        self, port: int, expires_in_seconds: int, headers: RequestHeaders
    ) -> dict[str, Any]:
        payload = {"port": port, "expires_in_seconds": expires_in_seconds}
        return await self._box_link("service-url", payload, headers)

    async def _box_link(
        self, what: str, payload: dict[str, Any], headers: RequestHeaders
    ) -> dict[str, Any]:
        """``POST <control>/boxes/{name}/{what}``: the control plane signs these links."""
        url = f"{self._client._base_url}/boxes/{self.name}/{what}"
        response = await self._client._call(
            "POST",
            url,
            lambda w: link_error(w, name=self.name, url=url),
            headers=headers,
            json=payload,
        )
        return self._client._json_object(response)
