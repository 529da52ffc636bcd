"""Data plane (spec §3): blocking ``/execute``, ``/upload`` and ``/download`` (HEAD and ranges).

Served at ``<server>/dp/<sandbox id>``: the id (not the name) keeps a ``dataplane_url`` valid
across renames. Every request carries the same ``X-Api-Key`` as the control plane.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from hutch.domain import QuotaExceeded, WrongState
from hutch.protocol._errors import ErrorType
from hutch.runtime._interface import (
    FileError,
    FileReader,
    FileStat,
    InvalidPath,
    SandboxNotFound,
    normalize_path,
)
from hutch.server import _ranges
from hutch.server._auth import Principal
from hutch.server._commands import HOME, CommandRequest, exec_spec
from hutch.server._control import on_this_node
from hutch.server._deps import Services, principal, services
from hutch.server._errors import ApiError, api_error
from hutch.server._exec import run_to_completion
from hutch.server._file_errors import file_error
from hutch.server._manager import READY, STOPPED, StartFailed
from hutch.store import Sandbox

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

router = APIRouter()


class ExecuteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: StrictStr
    timeout: Annotated[StrictInt, Field(ge=0, le=7 * 86400)] = 60
    shell: StrictStr = "/bin/bash"
    env: dict[StrictStr, StrictStr] | None = None
    cwd: StrictStr | None = None

    @field_validator("command", "shell", "cwd")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        if v is not None and "\x00" in v:
            raise ValueError("must not contain NUL bytes")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (v or {}).items():
            if not key or "=" in key or "\x00" in key or "\x00" in value:
                raise ValueError(f"invalid environment variable name or value: {key!r}")
        return v


def _utf8_len(text: str) -> int:
    """Bytes of ``text`` in UTF-8; mostly ASCII output is counted without encoding a copy."""
    return len(text) if text.isascii() else len(text.encode())


async def ready_sandbox(svc: Services, who: Principal, sandbox_id: str) -> Sandbox:
    row = await svc.manager.sandboxes.in_workspace(who.workspace_id, sandbox_id)
    if row is None:
        raise ApiError(
            ErrorType.NOT_FOUND, f"Sandbox '{sandbox_id}' not found; it may have been deleted"
        )
    on_this_node(svc, row)
    if row.status == STOPPED and row.template_id is None:
        row = await _resume(svc, row)
    if row.status == STOPPED:
        raise ApiError(
            ErrorType.NOT_READY,
            f"Sandbox '{row.name}' is stopped; start it first "
            f"(start_sandbox('{row.name}') or sb.start())",
        )
    if row.status != READY:
        raise ApiError(
            ErrorType.NOT_READY,
            f"Sandbox '{row.name}' is {row.status}, not ready"
            + (f": {row.status_message}" if row.status_message else ""),
        )
    return row


async def _resume(svc: Services, row: Sandbox) -> Sandbox:
    """Start a stopped snapshot-era sandbox (created without a template) on its first data-plane
    call, as the 0.8+ SDKs expect after an idle stop; under the workspace's quota like a start.
    Template-era sandboxes stay stopped until started (their SDKs never expect a resume)."""
    mgr = svc.manager
    try:
        fresh = await mgr.row(row.id)
        if fresh.status != STOPPED:  # a concurrent call resumed it (or it changed)
            return fresh
        return await mgr.start(row.id)  # a start of a ready one (resumed meanwhile) is a no-op
    except WrongState as exc:
        raise api_error(exc, f"{exc}; retry shortly") from exc
    except QuotaExceeded as exc:  # raised as ApiError: WebSocket upgrades refuse with it
        raise api_error(exc) from exc
    except StartFailed as exc:
        raise ApiError(exc.error, f"Could not resume sandbox '{row.name}': {exc}") from exc
    except SandboxNotFound as exc:
        raise ApiError(ErrorType.NOT_FOUND, f"Sandbox '{row.name}' was deleted") from exc


@router.post("/dp/{sandbox_id}/execute")
async def execute(
    sandbox_id: str,
    body: ExecuteBody,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    row = await ready_sandbox(svc, who, sandbox_id)
    spec = await exec_spec(
        svc, row, CommandRequest(command=body.command, shell=body.shell, env=body.env, cwd=body.cwd)
    )
    began = time.perf_counter()
    async with svc.manager.active(row.id):  # a running command keeps the idle TTL off
        try:
            proc = await svc.runtime.exec(row.id, spec)
        except SandboxNotFound as exc:
            raise ApiError(ErrorType.NOT_READY, f"Sandbox '{row.name}' is not running") from exc
        result = await run_to_completion(
            proc, timeout=body.timeout or None, max_bytes=svc.config.max_exec_output_bytes
        )
    metrics = svc.manager.metrics
    metrics.exec_done("blocking", time.perf_counter() - began)
    metrics.output("blocking", "stdout", _utf8_len(result.stdout))
    metrics.output("blocking", "stderr", _utf8_len(result.stderr))
    return {"stdout": result.stdout, "stderr": result.stderr, "exit_code": result.exit_code}


@router.post("/dp/{sandbox_id}/upload")
async def upload(
    sandbox_id: str,
    request: Request,
    path: str = Query(...),
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """Write the body's one file part to ``path``, streamed: never held in memory nor spooled on
    the host. It goes first into an unnamed file in the sandbox's own storage (under its disk
    quota), then into ``path``; so a refused upload (too large, cut off, malformed) changes
    nothing in the sandbox. The body's size was checked, and its sender authenticated, before
    any of it was read (:mod:`hutch.server._limits`)."""
    row = await ready_sandbox(svc, who, sandbox_id)
    limit = svc.config.max_upload_bytes
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise ApiError(ErrorType.VALIDATION, "Upload needs a Content-Length header", 411)
    try:
        target = normalize_path(path, HOME)
    except InvalidPath as exc:
        raise ApiError(ErrorType.WRITE_ERROR, str(exc)) from exc
    parts = _FilePart(_boundary(request.headers.get("content-type")), limit)
    try:
        async with contextlib.aclosing(_file_bytes(request, parts)) as data:
            await svc.runtime.write_file(row.id, target, data)
    except (FileError, SandboxNotFound) as exc:
        raise file_error(exc, row, ErrorType.WRITE_ERROR) from exc
    await svc.manager.touch(row.id)
    return {"path": target, "size": parts.size}


def _not_multipart(why: str) -> ApiError:
    return ApiError(
        ErrorType.VALIDATION,
        f"Upload body must be multipart/form-data with one file part named 'file': {why}",
    )


def _boundary(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise _not_multipart(f"Content-Type is {content_type or 'missing'}")
    return boundary


#: Longest header name or value of a multipart part (they are held in memory while parsed).
MAX_PART_HEADER = 8 * 1024


class _FilePart:
    """Parses a multipart/form-data body fed in pieces; hands out the bytes of its file part
    named ``file`` as they arrive (no I/O). Other parts are skipped, never kept; more than one
    file part or one other field, or a file over ``limit`` bytes, raises at once."""

    def __init__(self, boundary: bytes, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._files = 0
        self._fields = 0
        self._found = False
        self._in_file = False
        self._header = [b"", b""]
        self._disposition = b""
        self._out: list[bytes] = []
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._add(0, data[start:end]),
            "on_header_value": lambda data, start, end: self._add(1, data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
        }
        self._parser = MultipartParser(boundary, callbacks)

    def feed(self, data: bytes) -> list[bytes]:
        """Parse ``data``; returns the file's bytes found in it."""
        try:
            self._parser.write(data)
        except FormParserError as exc:
            raise _not_multipart(str(exc)) from exc
        out, self._out = self._out, []
        return out

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise _not_multipart(str(exc)) from exc
        if not self._found:
            raise _not_multipart("it has no complete part named 'file' with a filename")

    def _part_begin(self) -> None:
        self._disposition = b""

    def _add(self, which: int, piece: bytes) -> None:
        self._header[which] += piece
        if len(self._header[which]) > MAX_PART_HEADER:  # the body's limit is the file's
            raise _not_multipart(f"a part header is longer than {MAX_PART_HEADER} bytes")

    def _header_end(self) -> None:
        name, value = self._header
        if name.strip().lower() == b"content-disposition":
            self._disposition = value
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"filename" in options:
            self._files += 1
            self._in_file = options.get(b"name") == b"file"
        else:
            self._fields += 1
        if self._files > 1 or self._fields > 1:
            raise _not_multipart("too many parts")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.size += end - start
            if self.size > self.limit:
                raise _too_large(self.size, self.limit)
            self._out.append(data[start:end])

    def _part_end(self) -> None:
        self._found = self._found or self._in_file
        self._in_file = False


async def _file_bytes(request: Request, parts: _FilePart) -> AsyncGenerator[bytes, None]:
    """The bytes of the body's file part as they arrive; ends only after the whole body parsed
    as one well-formed multipart message (else raises, and the runtime writes nothing)."""
    try:
        async for piece in request.stream():
            for data in parts.feed(piece):
                yield data
    except ClientDisconnect as exc:
        raise _not_multipart("the body ended early") from exc
    parts.finish()


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        ErrorType.PAYLOAD_TOO_LARGE,
        f"Upload of {size} bytes exceeds this server's limit of {limit} bytes; write a bigger "
        "file in parts, or start the server with a larger --max-upload-bytes",
    )


@router.api_route("/dp/{sandbox_id}/download", methods=["GET", "HEAD"])
async def download(
    sandbox_id: str,
    request: Request,
    path: str = Query(...),
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Response:
    """Read a file: HEAD for its size and validators, GET for the bytes (``Range`` too)."""
    row = await ready_sandbox(svc, who, sandbox_id)
    return await serve_file(svc, row, request, path)


#: Sent with every file: a sandbox's files are its author's, so a browser must never run them
#: as a page of this server's origin (the web UI's cookie lives there). ``sandbox`` gives an
#: HTML file an opaque origin with scripts off; ``nosniff`` stops type guessing.
FILE_SAFETY_HEADERS = {
    "Content-Security-Policy": "sandbox",
    "X-Content-Type-Options": "nosniff",
}


async def serve_file(
    svc: Services,
    row: Sandbox,
    request: Request,
    path: str,
    *,
    content_type: str | None = None,
    disposition: Literal["attachment", "inline"] | None = None,
) -> Response:
    """Answer a GET or HEAD for one file of a ready sandbox (``/download`` and download links).

    * HEAD: 200 with ``Content-Length``, ``ETag``, ``Last-Modified``, ``Content-Type``.
    * GET: the file streamed with the same headers but no ``Content-Length`` (the sandbox may
      change the file while it is sent); ``Range`` (one range) gives 206 with
      ``Content-Range`` and ``Content-Length``, a range past the end 416 with
      ``Content-Range: bytes */<size>``. ``If-Range`` and ``If-None-Match`` (304) as RFC 9110.

    ``content_type`` overrides the type guessed from the name; ``disposition`` adds a
    ``Content-Disposition`` naming the file.
    """
    try:
        target = normalize_path(path, HOME)
        reader = await svc.runtime.open_file(row.id, target)
    except (FileError, SandboxNotFound) as exc:
        raise file_error(exc, row, ErrorType.READ_ERROR) from exc
    await svc.manager.touch(row.id)
    try:
        # The reader's one stat: the validators, the size and the bytes sent all describe the
        # same file, even if the path is renamed over meanwhile.
        st = reader.stat
        etag = _etag(st)
        modified = _ranges.last_modified_for(st.mtime_ns / 1e9)
        headers = {
            "ETag": etag,
            "Last-Modified": modified,
            "Accept-Ranges": "bytes",
            "X-Hutch-File-Size": str(st.size),
            **FILE_SAFETY_HEADERS,
        }
        if disposition is not None:
            headers["Content-Disposition"] = _ranges.content_disposition(
                disposition, posixpath.basename(target)
            )
        media_type = content_type or _ranges.content_type_for(target)
        plan = _ranges.plan(
            method=request.method,
            size=st.size,
            etag=etag,
            last_modified=modified,
            range_header=request.headers.get("range"),
            if_range=request.headers.get("if-range"),
            if_none_match=request.headers.get("if-none-match"),
        )
        if plan.not_modified:
            await reader.aclose()
            return Response(status_code=304, headers=headers)
        if plan.unsatisfiable:
            raise ApiError(
                ErrorType.READ_ERROR,
                f"Range '{request.headers.get('range')}' starts past the end of '{target}' "
                f"({st.size} bytes in sandbox '{row.name}'); ask for a range below "
                f"{st.size}",
                416,
                headers={"Content-Range": f"bytes */{st.size}"},
            )
        if request.method == "HEAD":
            await reader.aclose()
            headers["Content-Length"] = str(st.size)
            return Response(status_code=200, headers=headers, media_type=media_type)
    except BaseException:
        await reader.aclose()
        raise
    if plan.range is not None:
        part = plan.range
        headers["Content-Range"] = part.content_range
        headers["Content-Length"] = str(part.length)
        return StreamingResponse(
            _stream(reader, part.first, part.length),
            status_code=206,
            media_type=media_type,
            headers=headers,
        )
    return StreamingResponse(_stream(reader, 0, None), media_type=media_type, headers=headers)


def _etag(st: FileStat) -> str:
    """A strong ETag for a file version: a hash of the runtime's version of it (which changes
    with any write or rename-over); the hash keeps the runtime's numbers private."""
    return '"' + hashlib.sha256(st.version.encode()).hexdigest()[:32] + '"'


async def _stream(reader: FileReader, offset: int, length: int | None) -> AsyncIterator[bytes]:
    """``length`` bytes from ``offset`` (None: to the end); fewer if the file shrank meanwhile
    (a ranged response then ends short of its Content-Length, which clients see as a failed
    transfer, never as a complete one); closes ``reader``."""
    try:
        async for chunk in reader.read(offset, length):
            yield chunk
    finally:
        await reader.aclose()
