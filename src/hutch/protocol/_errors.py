"""The one table of wire errors, shared by server and SDK.

Every error the server sends is ``{"detail": {"error": <type>, "message": <text>}}`` (spec §2.0)
with the status listed here. The server raises from this table; the SDK parses with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ErrorType(StrEnum):
    """Machine-readable ``detail.error`` values hutch sends."""

    #: A request that is not well-formed HTTP for this API (a malformed URL, a body that cannot be
    #: read); the message says which part.
    BAD_REQUEST = "BadRequest"
    UNAUTHORIZED = "Unauthorized"
    FORBIDDEN = "Forbidden"
    VALIDATION = "ValidationError"
    NOT_FOUND = "NotFound"
    ALREADY_EXISTS = "AlreadyExists"
    NAME_CONFLICT = "NameConflict"
    IN_USE = "InUse"
    TIMEOUT = "Timeout"
    IMAGE_PULL = "ImagePull"
    SANDBOX_CONFIG = "SandboxConfig"
    CRASH_LOOP = "CrashLoop"
    QUOTA_EXCEEDED = "QuotaExceeded"
    NOT_READY = "NotReady"
    #: A ``proxy_config`` update to a sandbox that is not ready: the newest SDK's name for it
    #: (it raises ``SandboxNotReadyError`` on a 400 of this type from the update endpoint).
    INVALID_REQUEST = "InvalidRequest"
    FILE_NOT_FOUND = "FileNotFound"
    WRITE_ERROR = "WriteError"
    READ_ERROR = "ReadError"
    COMMAND_ERROR = "CommandError"
    COMMAND_TIMEOUT = "CommandTimeout"
    COMMAND_NOT_FOUND = "CommandNotFound"
    SESSION_EXPIRED = "SessionExpired"
    PAYLOAD_TOO_LARGE = "PayloadTooLarge"
    METHOD_NOT_ALLOWED = "MethodNotAllowed"
    NOT_IMPLEMENTED = "NotImplemented"
    INTERNAL = "InternalError"


# Default HTTP status for each error type. The server may override per call (rarely).
STATUS: dict[ErrorType, int] = {
    ErrorType.BAD_REQUEST: 400,
    ErrorType.UNAUTHORIZED: 401,
    ErrorType.FORBIDDEN: 403,
    ErrorType.VALIDATION: 422,
    ErrorType.NOT_FOUND: 404,
    ErrorType.ALREADY_EXISTS: 409,
    ErrorType.NAME_CONFLICT: 409,
    ErrorType.IN_USE: 409,
    ErrorType.TIMEOUT: 408,
    ErrorType.IMAGE_PULL: 422,
    ErrorType.SANDBOX_CONFIG: 422,
    ErrorType.CRASH_LOOP: 422,
    ErrorType.QUOTA_EXCEEDED: 429,
    ErrorType.NOT_READY: 400,
    ErrorType.INVALID_REQUEST: 400,
    ErrorType.FILE_NOT_FOUND: 404,
    ErrorType.WRITE_ERROR: 400,
    ErrorType.READ_ERROR: 400,
    ErrorType.COMMAND_ERROR: 400,
    ErrorType.COMMAND_TIMEOUT: 408,
    ErrorType.COMMAND_NOT_FOUND: 404,
    ErrorType.SESSION_EXPIRED: 410,
    ErrorType.PAYLOAD_TOO_LARGE: 413,
    ErrorType.METHOD_NOT_ALLOWED: 405,
    ErrorType.NOT_IMPLEMENTED: 501,
    ErrorType.INTERNAL: 500,
}


#: The error type of an answer that carries only an HTTP status (a framework's own 404, 405,
#: a body it could not read): the type the table gives that status, the generic one otherwise.
_FOR_STATUS: dict[int, ErrorType] = {
    400: ErrorType.BAD_REQUEST,
    401: ErrorType.UNAUTHORIZED,
    403: ErrorType.FORBIDDEN,
    404: ErrorType.NOT_FOUND,
    405: ErrorType.METHOD_NOT_ALLOWED,
    408: ErrorType.TIMEOUT,
    413: ErrorType.PAYLOAD_TOO_LARGE,
    422: ErrorType.VALIDATION,
    429: ErrorType.QUOTA_EXCEEDED,
    501: ErrorType.NOT_IMPLEMENTED,
}


def error_for_status(status: int) -> ErrorType:
    """The error type for a bare HTTP status: ``BadRequest`` for an unlisted 4xx, else
    ``InternalError``."""
    if status in _FOR_STATUS:
        return _FOR_STATUS[status]
    return ErrorType.BAD_REQUEST if 400 <= status < 500 else ErrorType.INTERNAL


@dataclass(frozen=True)
class WireError:
    """An error as it travels: status plus the ``detail`` envelope."""

    status: int
    error: str | None
    message: str
    raw_detail: Any = None
    #: Machine-readable facts sent in ``detail`` next to ``error`` and ``message`` (such as
    #: ``quota_type``); clients that do not know a key ignore it.
    fields: Mapping[str, str] | None = None

    def envelope(self) -> dict[str, Any]:
        return {"detail": {**(self.fields or {}), "error": self.error, "message": self.message}}

    def field(self, key: str) -> str | None:
        """A machine field of a parsed error's ``detail`` (None: absent, or not a string)."""
        detail = self.raw_detail if isinstance(self.raw_detail, dict) else self.fields or {}
        value = detail.get(key)
        return value if isinstance(value, str) else None


def make_error(
    error: ErrorType,
    message: str,
    status: int | None = None,
    fields: Mapping[str, str] | None = None,
) -> WireError:
    """Build the wire form of an error from the table."""
    return WireError(
        status=status if status is not None else STATUS[error],
        error=str(error),
        message=message,
        fields=dict(fields) if fields else None,
    )


def parse_error(status: int, body: Any, fallback_message: str) -> WireError:
    """Parse a response body per spec §2.0 into (error_type, message).

    ``detail`` may be an object (``error``/``message``), a pydantic-style list (messages joined with
    ``"; "``), or a string; anything else gives ``fallback_message``.
    """
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        err = detail.get("error")
        msg = detail.get("message")
        return WireError(
            status,
            err if isinstance(err, str) else None,
            msg if isinstance(msg, str) else fallback_message,
            detail,
        )
    if isinstance(detail, list) and detail:
        msgs = [
            str(item.get("msg", "")) if isinstance(item, dict) else str(item) for item in detail
        ]
        return WireError(status, None, "; ".join(msgs), detail)
    if isinstance(detail, str) and detail:
        return WireError(status, None, detail, detail)
    return WireError(status, None, fallback_message, detail)
