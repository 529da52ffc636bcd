"""Runtime file errors (:class:`hutch.runtime._interface.FileError`) on the wire: one table.

Every route that touches a sandbox's files maps the runtime's failures here, so a missing file,
a refused path or a stopped sandbox reads the same from ``/download``, ``/upload``, ``/glob``,
``/grep`` and command starts.
"""

from __future__ import annotations

from hutch.protocol._errors import ErrorType
from hutch.runtime._interface import FileError, FileNotFound, SandboxNotFound
from hutch.server._errors import ApiError
from hutch.store import Sandbox


def file_error(exc: FileError | SandboxNotFound, row: Sandbox, op: ErrorType) -> ApiError:
    """The envelope of a failed file operation ``op`` (``ReadError``, ``WriteError``…)."""
    if isinstance(exc, SandboxNotFound):
        return not_running(row)
    if isinstance(exc, FileNotFound):
        return ApiError(
            ErrorType.FILE_NOT_FOUND, f"File '{exc.path}' not found in sandbox '{row.name}'"
        )
    return ApiError(op, f"{exc} (sandbox '{row.name}')")


def not_running(row: Sandbox) -> ApiError:
    """A sandbox the database calls ready whose runtime has no running sandbox."""
    return ApiError(
        ErrorType.NOT_READY,
        f"Sandbox '{row.name}' is not running; delete it and create a new one",
    )
