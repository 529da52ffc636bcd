"""Data plane (spec §3): blocking ``/execute``, ``/upload`` and ``/download`` (HEAD and ranges).

Served at ``<server>/dp/<sandbox id>``: the id (not the name) keeps a ``dataplane_url`` valid
across renames. Every request carries the same ``X-Api-Key`` as the control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator
from sqlalchemy import select

from hutch.protocol._errors import ErrorType
from hutch.runtime import _fs
from hutch.runtime._interface import SandboxNotFound
from hutch.server import _ranges
from hutch.server._auth import Principal
from hutch.server._commands import HOME, CommandRequest, exec_spec, sandbox_root
from hutch.server._deps import Services, principal, services
from hutch.server._errors import ApiError
from hutch.server._exec import run_to_completion
from hutch.server._manager import READY, STOPPED, StartFailed, WrongState
from hutch.store import Sandbox

router = APIRouter()
CHUNK = 1 << 20


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


async def ready_sandbox(svc: Services, who: Principal, sandbox_id: str) -> Sandbox:
    async with svc.db.session() as s:
        row = (
            await s.execute(
                select(Sandbox).where(
                    Sandbox.id == sandbox_id, Sandbox.workspace_id == who.workspace_id
                )
            )
        ).scalar()
    if row is None:
        raise ApiError(
            ErrorType.NOT_FOUND, f"Sandbox '{sandbox_id}' not found; it may have been deleted"
        )
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
        async with mgr.quotas.lock(row.workspace_id):
            fresh = await mgr.row(row.id)
            if fresh.status != STOPPED:  # a concurrent call resumed it (or it changed)
                return fresh
            await mgr.quotas.check(row.workspace_id, row.cpu_millis, row.memory_bytes, new=False)
            return await mgr.start(row.id)
    except WrongState as exc:
        raise ApiError(ErrorType.NOT_READY, f"{exc}; retry shortly") from exc
    except StartFailed as exc:
        raise ApiError(exc.error, f"Could not resume sandbox '{row.name}': {exc}") from exc
    except SandboxNotFound as exc:
        raise ApiError(ErrorType.NOT_FOUND, f"Sandbox '{row.name}' was deleted") from exc


_root_fd = sandbox_root


def _path_error(exc: _fs.SandboxPathError, row: Sandbox, op: ErrorType) -> ApiError:
    if exc.kind == "not_found":
        return ApiError(
            ErrorType.FILE_NOT_FOUND, f"File '{exc.path}' not found in sandbox '{row.name}'"
        )
    return ApiError(op, f"{exc} (sandbox '{row.name}')")


@router.post("/dp/{sandbox_id}/execute")
async def execute(
    sandbox_id: str,
    body: ExecuteBody,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    row = await ready_sandbox(svc, who, sandbox_id)
    spec = exec_spec(
        svc, row, CommandRequest(command=body.command, shell=body.shell, env=body.env, cwd=body.cwd)
    )
    async with svc.manager.active(row.id):  # a running command keeps the idle TTL off
        try:
            proc = await svc.runtime.exec(row.id, spec)
        except SandboxNotFound as exc:
            raise ApiError(ErrorType.NOT_READY, f"Sandbox '{row.name}' is not running") from exc
        result = await run_to_completion(
            proc, timeout=body.timeout or None, max_bytes=svc.config.max_exec_output_bytes
        )
    return {"stdout": result.stdout, "stderr": result.stderr, "exit_code": result.exit_code}


@router.post("/dp/{sandbox_id}/upload")
async def upload(
    sandbox_id: str,
    request: Request,
    path: str = Query(...),
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    row = await ready_sandbox(svc, who, sandbox_id)
    limit = svc.config.max_upload_bytes
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise ApiError(ErrorType.VALIDATION, "Upload needs a Content-Length header", 411)
    if int(length) > limit + 64 * 1024:
        raise ApiError(
            ErrorType.PAYLOAD_TOO_LARGE,
            f"Upload of {length} bytes exceeds this server's limit of {limit} bytes",
        )
    try:
        target = _fs.normalize(path, HOME)
    except _fs.SandboxPathError as exc:
        raise ApiError(ErrorType.WRITE_ERROR, str(exc)) from exc
    try:
        form = await request.form(max_files=1, max_fields=1)
    except Exception as exc:
        raise ApiError(
            ErrorType.VALIDATION,
            f"Upload body must be multipart/form-data with one 'file' part: {exc}",
        ) from exc
    try:
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise ApiError(ErrorType.VALIDATION, "Upload body must have one file part named 'file'")
        if part.size is not None and part.size > limit:
            # Checked before the target is opened (and truncated): a refused upload changes nothing.
            raise _too_large(part.size, limit)
        root = _root_fd(svc, row)
        try:
            owner = svc.runtime.file_owner(row.id)
            size = await asyncio.to_thread(_write_from, root, target, part.file, limit, owner)
        except _fs.SandboxPathError as exc:
            raise _path_error(exc, row, ErrorType.WRITE_ERROR) from exc
        except _UploadTooLarge as exc:
            raise _too_large(exc.size, limit) from exc
        finally:
            os.close(root)
    finally:
        await form.close()
    await svc.manager.touch(row.id)
    return {"path": target, "size": size}


class _UploadTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        ErrorType.PAYLOAD_TOO_LARGE,
        f"Upload of {size} bytes exceeds this server's limit of {limit} bytes",
    )


def _write_from(root: int, target: str, src: Any, limit: int, owner: tuple[int, int]) -> int:
    fd = _fs.open_for_write(root, target, *owner)
    try:
        total = 0
        while chunk := src.read(CHUNK):
            total += len(chunk)
            if total > limit:
                raise _UploadTooLarge(total)
            _fs.write_all(fd, [chunk])
        return total
    except OSError as exc:
        raise _fs.SandboxPathError(
            "io", target, f"Cannot write '{target}': {exc.strerror}"
        ) from exc
    finally:
        os.close(fd)


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
    root = _root_fd(svc, row)
    try:
        target = _fs.normalize(path, HOME)
        fd, _ = _fs.open_for_read(root, target)
    except _fs.SandboxPathError as exc:
        raise _path_error(exc, row, ErrorType.READ_ERROR) from exc
    finally:
        os.close(root)
    await svc.manager.touch(row.id)
    try:
        # One fstat of the open fd: the validators, the size and the bytes sent all describe
        # the same inode, even if the path is renamed over meanwhile.
        st = os.fstat(fd)
        etag = _ranges.etag_for(st)
        modified = _ranges.last_modified_for(st.st_mtime)
        headers = {
            "ETag": etag,
            "Last-Modified": modified,
            "Accept-Ranges": "bytes",
            "X-Hutch-File-Size": str(st.st_size),
            **FILE_SAFETY_HEADERS,
        }
        if disposition is not None:
            headers["Content-Disposition"] = _ranges.content_disposition(
                disposition, posixpath.basename(target)
            )
        media_type = content_type or _ranges.content_type_for(target)
        plan = _ranges.plan(
            method=request.method,
            size=st.st_size,
            etag=etag,
            last_modified=modified,
            range_header=request.headers.get("range"),
            if_range=request.headers.get("if-range"),
            if_none_match=request.headers.get("if-none-match"),
        )
        if plan.not_modified:
            return Response(status_code=304, headers=headers)
        if plan.unsatisfiable:
            raise ApiError(
                ErrorType.READ_ERROR,
                f"Range '{request.headers.get('range')}' starts past the end of '{target}' "
                f"({st.st_size} bytes in sandbox '{row.name}'); ask for a range below "
                f"{st.st_size}",
                416,
                headers={"Content-Range": f"bytes */{st.st_size}"},
            )
        if request.method == "HEAD":
            headers["Content-Length"] = str(st.st_size)
            return Response(status_code=200, headers=headers, media_type=media_type)
    except BaseException:
        os.close(fd)
        raise
    if plan.range is not None:
        part = plan.range
        headers["Content-Range"] = part.content_range
        headers["Content-Length"] = str(part.length)
        return StreamingResponse(
            _read_range(fd, part.first, part.length),
            status_code=206,
            media_type=media_type,
            headers=headers,
        )
    return StreamingResponse(_read_all(fd), media_type=media_type, headers=headers)


async def _read_all(fd: int) -> AsyncIterator[bytes]:
    """The file from the start to EOF, a chunk at a time; closes ``fd``."""
    try:
        while chunk := await asyncio.to_thread(os.read, fd, CHUNK):
            yield chunk
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


async def _read_range(fd: int, offset: int, length: int) -> AsyncIterator[bytes]:
    """``length`` bytes from ``offset``, fewer if the file shrank meanwhile (the server then
    ends the response short of its Content-Length, which clients see as a failed transfer,
    never as a complete one); closes ``fd``."""
    try:
        while length > 0:
            chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK, length), offset)
            if not chunk:
                break
            offset += len(chunk)
            length -= len(chunk)
            yield chunk
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
