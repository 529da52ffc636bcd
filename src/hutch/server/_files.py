"""File helpers of the 0.13+ SDKs: ``POST /glob`` and ``/grep`` on the data plane, and signed
download links (``POST /boxes/{name}/download-url``, fetched from ``/dp/{id}/download-link``).

HEAD and ranged GET of ``/download`` live with ``/download`` in :mod:`hutch.server._dataplane`.
The searches themselves (walk, bounds, symlink confinement) are the runtime's
(:meth:`hutch.runtime._interface.SandboxFiles.glob` and ``grep``).
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator
from sqlalchemy import select

from hutch.protocol._errors import ErrorType
from hutch.runtime import _search
from hutch.runtime._interface import FileError, InvalidPath, SandboxNotFound, normalize_path
from hutch.server import _ranges
from hutch.server._auth import Principal
from hutch.server._commands import HOME
from hutch.server._control import _sandbox
from hutch.server._dataplane import ready_sandbox, serve_file
from hutch.server._deps import Services, dataplane_base, principal, services
from hutch.server._errors import ApiError
from hutch.server._file_errors import file_error
from hutch.server._manager import READY, STOPPED
from hutch.server._tokens import TokenError
from hutch.store import Sandbox

#: Data-plane routes (under /dp/{sandbox_id}).
router = APIRouter()
#: Control-plane routes (mounted under every control prefix).
control_router = APIRouter()

#: Matches returned when the client sends no ``limit``, and the most it may ask for (a larger
#: ``limit`` is lowered to this; ``truncated`` then tells the client there may be more).
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
#: Token kind of download links (see hutch.server._tokens).
DOWNLOAD_TOKEN = "download"
#: Longest lifetime a link may ask for (ten years); none asked means it never expires.
MAX_LINK_SECONDS = 10 * 365 * 86400


class _SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: StrictStr
    path: StrictStr
    limit: Annotated[StrictInt, Field(ge=1)] | None = None

    def limits(self) -> _search.Limits:
        return _search.Limits(max_results=min(self.limit or DEFAULT_LIMIT, MAX_LIMIT))


class GlobBody(_SearchBody):
    pass


class GrepBody(_SearchBody):
    glob: StrictStr | None = None

    @field_validator("pattern")
    @classmethod
    def _literal(cls, v: str) -> str:
        if not v:
            raise ValueError("must not be empty")
        if "\n" in v or "\x00" in v:
            raise ValueError("must be text within one line (no newline or NUL)")
        if len(v.encode()) > 4096:
            raise ValueError("must be at most 4096 bytes")
        return v


def _glob_pattern(pattern: str, what: str) -> _search.GlobPattern:
    try:
        return _search.GlobPattern(pattern)
    except ValueError as exc:
        raise ApiError(ErrorType.VALIDATION, f"Invalid {what} {pattern!r}: {exc}") from exc


def _search_root(path: str, row: Sandbox) -> str:
    try:
        return normalize_path(path, HOME)
    except InvalidPath as exc:
        raise file_error(exc, row, ErrorType.READ_ERROR) from exc


@router.post("/dp/{sandbox_id}/glob")
async def glob(
    sandbox_id: str,
    body: GlobBody,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """Entries below ``path`` whose path relative to it matches ``pattern`` (``ls`` is ``*``)."""
    row = await ready_sandbox(svc, who, sandbox_id)
    pattern = _glob_pattern(body.pattern, "glob pattern")
    where = _search_root(body.path, row)
    limits = body.limits()
    try:
        result = await svc.runtime.glob(row.id, where, pattern, limits)
    except (FileError, SandboxNotFound) as exc:
        raise file_error(exc, row, ErrorType.READ_ERROR) from exc
    await svc.manager.touch(row.id)
    return {"matches": [asdict(m) for m in result.matches], "truncated": result.truncated}


@router.post("/dp/{sandbox_id}/grep")
async def grep(
    sandbox_id: str,
    body: GrepBody,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """Lines holding the literal ``pattern`` in files below ``path`` (``glob`` picks files: a
    bare ``*.py`` by base name at any depth, one with ``/`` or ``**`` by relative path)."""
    row = await ready_sandbox(svc, who, sandbox_id)
    pattern: _search.GlobPattern | None = None
    by_name: str | None = None
    if body.glob is not None:
        if "/" in body.glob or "**" in body.glob:
            pattern = _glob_pattern(body.glob, "glob")
        else:
            _glob_pattern(body.glob, "glob")  # same validation for the one-segment form
            by_name = body.glob
    where = _search_root(body.path, row)
    try:
        result = await svc.runtime.grep(
            row.id, where, body.pattern, body.limits(), path_pattern=pattern, name_pattern=by_name
        )
    except (FileError, SandboxNotFound) as exc:
        raise file_error(exc, row, ErrorType.READ_ERROR) from exc
    await svc.manager.touch(row.id)
    return {"matches": [asdict(m) for m in result.matches], "truncated": result.truncated}


# -- download links ----------------------------------------------------------------------------


class DownloadUrlBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: StrictStr
    expires_in_seconds: Annotated[StrictInt, Field(ge=1, le=MAX_LINK_SECONDS)] | None = None
    content_type: StrictStr | None = None
    content_disposition: Literal["attachment", "inline"] | None = None

    @field_validator("content_type")
    @classmethod
    def _media_type(cls, v: str | None) -> str | None:
        if v is not None and not _ranges.valid_media_type(v):
            raise ValueError("must be a media type such as 'text/plain; charset=utf-8'")
        return v


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@control_router.post("/boxes/{name}/download-url")
async def create_download_url(
    name: str,
    body: DownloadUrlBody,
    request: Request,
    svc: Services = Depends(services),
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """A link that serves one file of the sandbox to anyone holding it, with no API key.

    The token pins the sandbox id, the normalised path and the response headers asked for.
    Minting does not look at the file (it may not exist yet) nor wake the sandbox.
    """
    row = await _sandbox(svc, who, name)
    try:
        path = normalize_path(body.path, HOME)
    except InvalidPath as exc:
        raise ApiError(ErrorType.VALIDATION, f"Invalid path {body.path!r}: {exc}") from exc
    expires = None
    if body.expires_in_seconds is not None:
        expires = int(time.time()) + body.expires_in_seconds
    claims: dict[str, Any] = {"sb": row.id, "path": path}
    if body.content_type is not None:
        claims["ct"] = body.content_type
    if body.content_disposition is not None:
        claims["cd"] = body.content_disposition
    token = svc.tokens.sign(DOWNLOAD_TOKEN, claims, expires)
    query = urllib.parse.urlencode({"path": path, "token": token})
    return {
        "download_url": f"{dataplane_base(request)}/{row.id}/download-link?{query}",
        "token": token,
        "expires_at": _iso(expires) if expires is not None else None,
    }


_NEW_LINK = "mint a new link with generate_download_url()"


@router.api_route("/dp/{sandbox_id}/download-link", methods=["GET", "HEAD"])
async def fetch_download_link(
    sandbox_id: str,
    request: Request,
    path: str = Query(...),
    token: str = Query(...),
    svc: Services = Depends(services),
) -> Response:
    """Serve the file a download token names; the token is the only credential (no API key).

    Checked in this order, so a forged or foreign token learns nothing about any sandbox:
    signature, kind and expiry (401), then that the token is for this sandbox and exactly this
    path (403), then the sandbox (404 gone, 400 stopped). Serving is ``/download``'s, Range
    and conditional requests included.
    """
    try:
        claims = svc.tokens.verify(token, DOWNLOAD_TOKEN)
    except TokenError as exc:
        raise ApiError(
            ErrorType.UNAUTHORIZED, f"Download link is not valid ({exc}); {_NEW_LINK}"
        ) from exc
    if claims.get("sb") != sandbox_id or claims.get("path") != path:
        raise ApiError(
            ErrorType.FORBIDDEN,
            f"This download link is for another file; {_NEW_LINK} for the file you want",
        )
    async with svc.db.session() as s:
        row = (await s.execute(select(Sandbox).where(Sandbox.id == sandbox_id))).scalar()
    if row is None:
        raise ApiError(ErrorType.NOT_FOUND, "The sandbox of this download link has been deleted")
    if row.status == STOPPED:
        raise ApiError(
            ErrorType.NOT_READY,
            f"Sandbox '{row.name}' is stopped; start it (start_sandbox('{row.name}') or "
            "sb.start()), then use the link again",
        )
    if row.status != READY:
        raise ApiError(
            ErrorType.NOT_READY,
            f"Sandbox '{row.name}' is {row.status}, not ready; try the link again later",
        )
    content_type = claims.get("ct")
    disposition = claims.get("cd")
    return await serve_file(
        svc,
        row,
        request,
        path,
        content_type=content_type if isinstance(content_type, str) else None,
        disposition=disposition if disposition in ("attachment", "inline") else None,
    )
