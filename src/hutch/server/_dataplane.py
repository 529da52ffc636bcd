"""Data plane (spec §3): blocking ``/execute``, ``/upload`` and ``/download``.

Served at ``<server>/dp/<sandbox id>``: the id (not the name) keeps a ``dataplane_url`` valid
across renames. Every request carries the same ``X-Api-Key`` as the control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator
from sqlalchemy import select

from hutch.protocol._errors import ErrorType
from hutch.runtime import _fs
from hutch.runtime._interface import SandboxNotFound
from hutch.server._auth import Principal
from hutch.server._commands import CommandRequest, exec_spec, sandbox_root
from hutch.server._deps import Services, principal, services
from hutch.server._errors import ApiError
from hutch.server._exec import run_to_completion
from hutch.server._manager import READY, STOPPED
from hutch.store import Sandbox

router = APIRouter()
HOME = "/home/user"
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


@router.get("/dp/{sandbox_id}/download")
async def download(
    sandbox_id: str,
    path: str = Query(...),
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> Response:
    row = await ready_sandbox(svc, who, sandbox_id)
    root = _root_fd(svc, row)
    try:
        target = _fs.normalize(path, HOME)
        fd, size = _fs.open_for_read(root, target)
    except _fs.SandboxPathError as exc:
        raise _path_error(exc, row, ErrorType.READ_ERROR) from exc
    finally:
        os.close(root)
    await svc.manager.touch(row.id)

    async def body() -> AsyncIterator[bytes]:
        try:
            while chunk := await asyncio.to_thread(os.read, fd, CHUNK):
                yield chunk
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    # No Content-Length: the sandbox may change the file while it is being sent.
    return StreamingResponse(
        body(), media_type="application/octet-stream", headers={"X-Hutch-File-Size": str(size)}
    )
