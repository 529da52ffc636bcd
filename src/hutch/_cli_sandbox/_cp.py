"""``hutch sandbox cp``: files and directories between this machine and a sandbox.

``NAME:PATH`` names a sandbox path (relative paths are from the sandbox's home). A destination
ending in ``/`` (remote) or an existing local directory receives the source under its own name.
Downloads of large files go in ranges, checked against the file's ETag so a file changed
meanwhile is reported rather than stitched together. Paths a sandbox lists are never trusted: a
name with ``..`` or an absolute path is refused before anything is written.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import typer

from hutch._cli_sandbox._common import conn, errors, fail, require_ready, stderr_is_tty
from hutch._cli_sandbox._control import sandbox_app

if TYPE_CHECKING:
    from hutch.client import Sandbox

#: Bytes per ranged download request.
RANGE = 8 * 1024 * 1024
#: Transfers at least this big show a progress bar (when stderr is a terminal).
PROGRESS_FROM = 1024 * 1024
#: Most files one directory download takes (the listing's own limit).
MAX_FILES = 10_000

_REMOTE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*):(.*)$", re.DOTALL)


def parse_remote(arg: str) -> tuple[str, str] | None:
    """``(sandbox, path)`` of ``NAME:PATH``, None for a local path (write ``./a:b`` for a local
    file with a colon)."""
    m = _REMOTE.match(arg)
    if m is None or arg.startswith((".", "/")):
        return None
    return m.group(1), m.group(2) or "."


class _Progress:
    """A rich progress bar on stderr, or nothing (not a terminal, or a small transfer)."""

    def __init__(self, total: int, label: str) -> None:
        self._bar: Any = None
        self._task: Any = None
        if stderr_is_tty() and total >= PROGRESS_FROM:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._task = self._bar.add_task(label, total=total)

    def __call__(self) -> AbstractContextManager[Any]:
        return self._bar if self._bar is not None else nullcontext()

    def advance(self, size: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, size)

    def within(self, size: int) -> Callable[[int], None]:
        """A callback taking the bytes of one ``size``-byte file done so far (again from 0
        if it is sent anew); the bar has advanced by ``size`` once it ends at ``size``."""
        done = 0

        def report(sent: int) -> None:
            nonlocal done
            sent = min(sent, size)  # a file grown meanwhile does not overfill the bar
            self.advance(sent - done)
            done = sent

        return report


@dataclass
class _File:
    remote: str
    local: Path
    size: int


def _safe_relative(root: str, path: str) -> PurePosixPath:
    """``path`` (listed by the sandbox) relative to ``root``, refusing any escape."""
    rel = PurePosixPath(path)
    if rel.is_absolute():
        try:
            rel = rel.relative_to(PurePosixPath(root))
        except ValueError:
            fail(f"the sandbox listed {path!r}, outside {root!r}; nothing was copied")
    if not rel.parts or any(part in ("", ".", "..") for part in rel.parts):
        fail(f"the sandbox listed an unsafe path {path!r}; nothing was copied")
    return rel


def _download_plan(sb: Sandbox, remote: str, local: Path) -> list[_File]:
    """The files to fetch: ``remote`` itself, or every regular file below it."""
    from hutch.client import ResourceNotFoundError, SandboxClientError

    name = PurePosixPath(remote).name or "download"
    target = local / name if local.is_dir() else local
    try:
        return [_File(remote, target, sb.stat(remote).size_bytes)]
    except ResourceNotFoundError:
        raise
    except SandboxClientError as not_a_file:
        # Not a regular file (HEAD says no more than that): maybe a directory.
        try:
            listing = sb.glob("**", remote, limit=MAX_FILES)
        except SandboxClientError:
            raise not_a_file from None
    if listing.truncated:
        fail(f"{remote} holds more than {MAX_FILES} entries; copy its subdirectories one by one")
    root = remote.rstrip("/") or "/"
    files = []
    for info in listing.matches:
        if info.is_dir:
            continue
        rel = _safe_relative(root, info.path)
        files.append(_File(f"{root}/{rel}", target.joinpath(*rel.parts), info.size_bytes))
    target.mkdir(parents=True, exist_ok=True)
    return files


def _fetch(sb: Sandbox, item: _File, progress: _Progress) -> None:
    """Download one file into a temporary file beside its target, then move it in place."""
    item.local.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=item.local.parent, prefix=f".{item.local.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            if item.size <= RANGE:
                data = sb.read(item.remote)
                out.write(data)
                progress.advance(len(data))
            else:
                start, etag = 0, None
                while True:
                    chunk = sb.read_range(
                        item.remote, start=start, end=start + RANGE - 1, if_range=etag
                    )
                    if start and not chunk.partial:
                        fail(f"{item.remote} changed while it was copied; try again")
                    etag = etag or chunk.etag
                    out.write(chunk.content)
                    progress.advance(len(chunk.content))
                    start += len(chunk.content)
                    total = chunk.total_bytes if chunk.total_bytes is not None else item.size
                    if not chunk.content or start >= total:
                        break
        os.replace(tmp, item.local)
    except BaseException:
        os.unlink(tmp)
        raise


def _upload_plan(local: Path, remote: str) -> list[_File]:
    if remote.endswith("/") or remote == ".":  # ``sb:`` is the sandbox's home
        remote = f"{remote.rstrip('.')}{local.name}"
    if not local.is_dir():
        return [_File(remote, local, local.stat().st_size)]
    files = []
    for path in sorted(local.rglob("*")):
        # Symlinks are not followed: they could point anywhere on this machine.
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(local).as_posix()
            files.append(_File(f"{remote.rstrip('/')}/{rel}", path, path.stat().st_size))
    return files


@sandbox_app.command("cp")
def sandbox_cp(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="LOCAL_PATH or NAME:PATH"),
    dest: str = typer.Argument(..., help="NAME:PATH or LOCAL_PATH"),
) -> None:
    """Copy a file or directory into or out of a sandbox, byte for byte.

    cp ./a.txt sb:/tmp/ puts /tmp/a.txt in sandbox sb; cp sb:/tmp/a.txt . copies it back.
    """
    src_remote, dst_remote = parse_remote(source), parse_remote(dest)
    if (src_remote is None) == (dst_remote is None):
        fail("give exactly one sandbox path, as NAME:PATH (e.g. sb:/tmp/file)", 2)
    with errors(), conn(ctx).client() as client:
        if src_remote is not None:
            sb = client.get_sandbox(src_remote[0])
            require_ready(sb)
            plan = _download_plan(sb, src_remote[1], Path(dest))
            progress = _Progress(sum(f.size for f in plan), f"{source} →")
            with progress():
                for item in plan:
                    _fetch(sb, item, progress)
        else:
            assert dst_remote is not None
            local = Path(source)
            if not local.exists():
                fail(f"{source}: no such file or directory")
            plan = _upload_plan(local, dst_remote[1])
            sb = client.get_sandbox(dst_remote[0])
            require_ready(sb)
            progress = _Progress(sum(f.size for f in plan), f"→ {dest}")
            with progress():
                for item in plan:
                    # Streamed from the open file: the bar follows the bytes as they are sent,
                    # and memory stays bounded whatever the file's size.
                    with item.local.open("rb") as f:
                        sb.write(item.remote, f, progress=progress.within(item.size))
