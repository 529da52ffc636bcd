"""HTTP error responses to SDK exceptions (spec §2.0, §2.1, §2.2, §3.5).

Pure functions: each takes the parsed :class:`~hutch.protocol._errors.WireError` of a non-2xx
response and *returns* the exception to raise, with ``status`` set. The client raises it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from hutch.client._errors import (
    QuotaExceededError,
    ResourceCreationError,
    ResourceInUseError,
    ResourceNameConflictError,
    ResourceNotFoundError,
    ResourceTimeoutError,
    SandboxAPIError,
    SandboxAuthenticationError,
    SandboxClientError,
    SandboxConnectionError,
    SandboxNotReadyError,
    SandboxOperationError,
    ValidationError,
)
from hutch.protocol._errors import ErrorType, WireError, parse_error

TemplateOp = Literal["create", "list", "get", "update", "delete"]
SandboxOp = Literal["list", "get", "update", "delete", "status"]

# ``detail.error`` of a 502 that means "the server could not reach the sandbox" (spec §2.0, §3.5).
_CONNECTION_ERROR = "ConnectionError"


def decode_error(status: int, content: bytes, fallback_message: str) -> WireError:
    """Parse a response body (which may not be JSON at all) into a :class:`WireError`."""
    body: Any
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    return parse_error(status, body, fallback_message)


def quota_type(message: str) -> str | None:
    """Classify a quota message (spec §2.0; the order of the checks matters)."""
    text = message.lower()
    if "sandbox" in text and ("count" in text or "limit" in text):
        return "sandbox_count"
    if "cpu" in text:
        return "cpu"
    if "memory" in text:
        return "memory"
    if "volume" in text and ("count" in text or "limit" in text):
        return "volume_count"
    if "storage" in text:
        return "storage"
    return None


#: ``detail.quota_type`` of a hutch server → the SDK's ``QuotaExceededError.quota_type`` (the
#: langsmith SDKs' words for the same quotas).
_QUOTA_TYPES = {"sandboxes": "sandbox_count", "cpu": "cpu", "memory": "memory"}


def quota_error(wire: WireError) -> QuotaExceededError:
    """A 429 as :class:`QuotaExceededError`: its type from ``detail.quota_type`` when the server
    sends one, else from the words of the message (older servers, other servers)."""
    sent = wire.field("quota_type")
    kind = _QUOTA_TYPES.get(sent, sent) if sent else quota_type(wire.message)
    return QuotaExceededError(wire.message, quota_type=kind)


def _details(wire: WireError) -> list[dict[str, Any]]:
    """The pydantic-style detail list of a 422, or ``[]``."""
    if isinstance(wire.raw_detail, list):
        return [item for item in wire.raw_detail if isinstance(item, dict)]
    return []


def _field(details: list[dict[str, Any]]) -> str | None:
    """Last element of ``detail[0].loc``, as a string; ``None`` if absent."""
    if not details:
        return None
    loc = details[0].get("loc")
    if isinstance(loc, list | tuple) and loc:
        return str(loc[-1])
    return None


def _with_status(exc: SandboxClientError, wire: WireError) -> SandboxClientError:
    exc.status = wire.status
    return exc


def generic_error(wire: WireError) -> SandboxClientError:
    """The generic control-plane mapping (spec §2.0)."""
    status, message = wire.status, wire.message
    exc: SandboxClientError
    if status in (401, 403):
        exc = SandboxAuthenticationError(message)
    elif status == 404:
        exc = ResourceNotFoundError(message)
    elif status == 422:
        details = _details(wire)
        exc = ValidationError(
            message, field=_field(details), details=details, error_type=wire.error
        )
    elif status == 429:
        exc = quota_error(wire)
    elif status == 502 and wire.error == _CONNECTION_ERROR:
        exc = SandboxConnectionError(message)
    elif status == 500:
        exc = SandboxAPIError(message)
    else:
        exc = SandboxClientError(message)
    return _with_status(exc, wire)


def _endpoint_missing(url: str) -> str:
    return f"API endpoint not found: {url}. Check that api_endpoint is correct."


def template_not_found_message(name: str) -> str:
    return f"Template '{name}' not found; create it with create_template()"


def sandbox_not_found_message(name: str) -> str:
    return f"Sandbox '{name}' not found; see the existing ones with list_sandboxes()"


def template_error(wire: WireError, *, op: TemplateOp, name: str, url: str) -> SandboxClientError:
    """Errors of the template endpoints (spec §2.1)."""
    status = wire.status
    if op == "list" and status == 404:
        return _with_status(SandboxAPIError(_endpoint_missing(url)), wire)
    if op in ("get", "update", "delete") and status == 404:
        return _with_status(
            ResourceNotFoundError(template_not_found_message(name), resource_type="template"),
            wire,
        )
    if op == "update" and status == 409:
        return _with_status(ResourceNameConflictError(wire.message, resource_type="template"), wire)
    if op == "delete" and status == 409:
        return _with_status(ResourceInUseError(wire.message, resource_type="template"), wire)
    return generic_error(wire)


def sandbox_create_error(
    wire: WireError, *, origin: Literal["template", "snapshot"] = "template"
) -> SandboxClientError:
    """Errors of ``POST /boxes`` (spec §2.2).

    Two departures from the langsmith SDK, both where hutch's server is explicit: a 422 whose
    ``detail.error`` is ``"ValidationError"`` is a :class:`ValidationError` (not a creation
    failure), and a 404 (the template or snapshot ``origin`` does not exist) carries
    ``resource_type=origin``.
    """
    status, message = wire.status, wire.message
    exc: SandboxClientError
    if status == 408:
        exc = ResourceTimeoutError(message, resource_type="sandbox")
    elif status == 422:
        details = _details(wire)
        if any(item.get("type") == "value_error" for item in details):
            exc = ValidationError(message, field=_field(details), details=details)
        elif wire.error == ErrorType.VALIDATION:
            exc = ValidationError(
                message, field=_field(details), details=details, error_type=wire.error
            )
        else:
            exc = ResourceCreationError(message, resource_type="sandbox", error_type=wire.error)
    elif status == 429:
        exc = quota_error(wire)
    elif status == 503:
        exc = ResourceCreationError(
            message, resource_type="sandbox", error_type=wire.error or "Unschedulable"
        )
    elif status == 404:
        exc = ResourceNotFoundError(message, resource_type=origin)
    else:
        return generic_error(wire)
    return _with_status(exc, wire)


def sandbox_error(
    wire: WireError,
    *,
    op: SandboxOp,
    name: str,
    url: str,
    new_name: str | None = None,
) -> SandboxClientError:
    """Errors of the other sandbox endpoints (spec §2.2)."""
    status = wire.status
    if op == "list" and status == 404:
        return _with_status(SandboxAPIError(_endpoint_missing(url)), wire)
    if op != "list" and status == 404:
        return _with_status(
            ResourceNotFoundError(sandbox_not_found_message(name), resource_type="sandbox"),
            wire,
        )
    if op == "update" and status == 409:
        return _with_status(
            ResourceNameConflictError(
                f"Sandbox name '{new_name}' already in use", resource_type="sandbox"
            ),
            wire,
        )
    return generic_error(wire)


def snapshot_error(wire: WireError, *, ref: str, url: str) -> SandboxClientError:
    """Errors of the snapshot endpoints (spec §9.1): a 404 is no such snapshot (or snapshot
    name), except on the list, where it means the server has no snapshot API."""
    if wire.status == 404:
        if not ref:
            return _with_status(SandboxAPIError(_endpoint_missing(url)), wire)
        return _with_status(
            ResourceNotFoundError(
                f"Snapshot '{ref}' not found; see the existing ones with list_snapshots()",
                resource_type="snapshot",
            ),
            wire,
        )
    return generic_error(wire)


def capture_error(wire: WireError, *, sandbox_name: str, url: str) -> SandboxClientError:
    """Errors of ``POST /boxes/{name}/snapshot``: a 404 is no such sandbox."""
    return sandbox_error(wire, op="get", name=sandbox_name, url=url)


def dataplane_error(wire: WireError) -> SandboxClientError:
    """Errors of ``/execute``, ``/upload`` and ``/download`` (spec §3.5; rules in order)."""
    status, message, err = wire.status, wire.message, wire.error
    exc: SandboxClientError
    if err == ErrorType.WRITE_ERROR:
        exc = SandboxOperationError(message, operation="write", error_type=err)
    elif err == ErrorType.READ_ERROR:
        exc = SandboxOperationError(message, operation="read", error_type=err)
    elif err == ErrorType.COMMAND_ERROR:
        exc = SandboxOperationError(message, operation="command", error_type=err)
    elif status == 403:
        exc = SandboxOperationError(message, error_type="PermissionDenied")
    elif status == 502 and err == _CONNECTION_ERROR:
        exc = SandboxConnectionError(message)
    elif status == 400 and err == ErrorType.NOT_READY:
        exc = SandboxNotReadyError(message)
    elif status == 404 or err == ErrorType.FILE_NOT_FOUND:
        exc = ResourceNotFoundError(message, resource_type="file")
    else:
        exc = SandboxClientError(message)
    return _with_status(exc, wire)


def download_error(wire: WireError, *, path: str, sandbox_name: str) -> SandboxClientError:
    """Errors of ``GET /download``: a 404 names the file and the sandbox (spec §3.4)."""
    if wire.status == 404:
        return _with_status(
            ResourceNotFoundError(
                f"File '{path}' not found in sandbox '{sandbox_name}'", resource_type="file"
            ),
            wire,
        )
    return dataplane_error(wire)


def file_error(wire: WireError, *, path: str, sandbox_name: str) -> SandboxClientError:
    """Errors of the file helpers (``stat``, ``read_range``, ``glob``, ``grep``).

    A missing file or search root is :class:`ResourceNotFoundError` (``resource_type="file"``;
    a HEAD answer has no body, so the message is built here), a missing sandbox the same with
    ``resource_type="sandbox"``, a refused pattern or path :class:`ValidationError`, a range
    past the end (416, ``ReadError``) :class:`SandboxOperationError`; the rest as
    :func:`dataplane_error`.
    """
    if wire.status == 404:
        if wire.error == ErrorType.NOT_FOUND:
            return _with_status(ResourceNotFoundError(wire.message, resource_type="sandbox"), wire)
        message = (
            wire.message
            if wire.error == ErrorType.FILE_NOT_FOUND
            else f"'{path}' not found in sandbox '{sandbox_name}'"
        )
        return _with_status(ResourceNotFoundError(message, resource_type="file"), wire)
    if wire.status == 422:
        return generic_error(wire)
    return dataplane_error(wire)


def link_error(wire: WireError, *, name: str, url: str) -> SandboxClientError:
    """Errors of ``POST /boxes/{name}/service-url`` and ``/download-url``: 404 is no such
    sandbox, ``NotReady`` (a stopped sandbox's service) :class:`SandboxNotReadyError`."""
    if wire.error == ErrorType.NOT_READY:
        return _with_status(SandboxNotReadyError(wire.message), wire)
    return sandbox_error(wire, op="get", name=name, url=url)
