"""HTTP error responses to SDK exceptions: every row of spec §2.0, §2.1, §2.2 and §3.5."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hutch import (
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
from hutch.client import _mapping
from hutch.protocol._errors import WireError

FALLBACK = "fallback text"
PYDANTIC = [
    {"loc": ["body", "resources", "cpu"], "msg": "too much cpu", "type": "value_error"},
    {"loc": ["body", "name"], "msg": "bad name", "type": "string_type"},
]


def wire(status: int, body: Any = None) -> WireError:
    """Parse a body the way the client does, from raw bytes."""
    content = b"" if body is None else json.dumps(body).encode()
    return _mapping.decode_error(status, content, FALLBACK)


def env(error: str | None, message: str = "msg") -> dict[str, Any]:
    return {"detail": {"error": error, "message": message}}


# -- Envelope (§2.0) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (b'{"detail": {"error": "NotFound", "message": "gone"}}', "NotFound", "gone"),
        (b'{"detail": {"error": "NotFound"}}', "NotFound", FALLBACK),
        (b'{"detail": {"message": "no type"}}', None, "no type"),
        (b'{"detail": [{"msg": "a"}, {"msg": "b"}]}', None, "a; b"),
        (b'{"detail": "plain"}', None, "plain"),
        (b'{"detail": ""}', None, FALLBACK),
        (b'{"detail": []}', None, FALLBACK),
        (b'{"error": "Top", "message": "ignored"}', None, FALLBACK),
        (b"<html>bad gateway</html>", None, FALLBACK),
        (b"", None, FALLBACK),
    ],
)
def test_envelope_parsing(content: bytes, error: str | None, message: str) -> None:
    """The body gives (error_type, message) per the envelope table; top-level keys are ignored."""
    parsed = _mapping.decode_error(418, content, FALLBACK)
    assert (parsed.error, parsed.message) == (error, message)


# -- Generic mapping (§2.0) -----------------------------------------------------------------------

GENERIC_ROWS = [
    (401, env("Unauthorized"), SandboxAuthenticationError),
    (403, env("Forbidden"), SandboxAuthenticationError),
    (404, env("NotFound"), ResourceNotFoundError),
    (422, {"detail": PYDANTIC}, ValidationError),
    (422, env("ValidationError"), ValidationError),
    (429, env("QuotaExceeded", "sandbox limit reached"), QuotaExceededError),
    (502, env("ConnectionError"), SandboxConnectionError),
    (500, env("InternalError"), SandboxAPIError),
    (400, env("NotReady"), SandboxClientError),
    (409, env("AlreadyExists"), SandboxClientError),
    (302, None, SandboxClientError),
    (501, env("NotImplemented"), SandboxClientError),
    (502, env("BadGateway"), SandboxClientError),
    (503, env(None), SandboxClientError),
    (504, None, SandboxClientError),
]


@pytest.mark.parametrize(("status", "body", "cls"), GENERIC_ROWS)
def test_generic_mapping(status: int, body: Any, cls: type[Exception]) -> None:
    """Each status of the generic table gives exactly its class, with ``status`` set."""
    exc = _mapping.generic_error(wire(status, body))
    assert type(exc) is cls
    assert exc.status == status


def test_generic_not_found_has_no_resource_type() -> None:
    """A generic 404 does not guess what was missing."""
    exc = _mapping.generic_error(wire(404, env("NotFound", "nope")))
    assert isinstance(exc, ResourceNotFoundError)
    assert (str(exc), exc.resource_type) == ("nope", None)


def test_generic_validation_error_from_pydantic_list() -> None:
    """A pydantic 422 gives the last ``loc`` element of the first item and the whole list."""
    exc = _mapping.generic_error(wire(422, {"detail": PYDANTIC}))
    assert isinstance(exc, ValidationError)
    assert exc.field == "cpu"
    assert exc.details == PYDANTIC
    assert str(exc) == "too much cpu; bad name"


def test_generic_validation_error_from_envelope() -> None:
    """An enveloped 422 has no field or details, and keeps its error type."""
    exc = _mapping.generic_error(wire(422, env("ValidationError", "bad cpu")))
    assert isinstance(exc, ValidationError)
    assert (exc.field, exc.details, exc.error_type) == (None, [], "ValidationError")


def test_generic_validation_error_with_odd_loc() -> None:
    """A pydantic item without a usable ``loc`` gives no field instead of crashing."""
    exc = _mapping.generic_error(wire(422, {"detail": [{"loc": [], "msg": "x"}]}))
    assert isinstance(exc, ValidationError)
    assert exc.field is None


def test_generic_message_falls_back() -> None:
    """Without a usable body the message is the client's fallback text."""
    assert str(_mapping.generic_error(wire(500))) == FALLBACK


@pytest.mark.parametrize(
    ("message", "quota_type"),
    [
        ("Sandbox count exceeded", "sandbox_count"),
        ("sandbox LIMIT reached for cpu", "sandbox_count"),
        ("CPU quota exceeded", "cpu"),
        ("cpu and memory exhausted", "cpu"),
        ("memory quota exceeded", "memory"),
        ("Volume count exceeded", "volume_count"),
        ("volume limit hit for storage", "volume_count"),
        ("storage quota exceeded", "storage"),
        ("volume storage exceeded", "storage"),
        ("sandbox quota", None),
        ("too many requests", None),
    ],
)
def test_quota_type_classification(message: str, quota_type: str | None) -> None:
    """The quota type comes from the lowercased message, checked in the spec's order."""
    assert _mapping.quota_type(message) == quota_type
    exc = _mapping.generic_error(wire(429, env("QuotaExceeded", message)))
    assert isinstance(exc, QuotaExceededError)
    assert exc.quota_type == quota_type


# -- Templates (§2.1) -----------------------------------------------------------------------------

URL = "http://hutch.test/v2/sandboxes/templates"


@pytest.mark.parametrize(
    ("op", "status", "body", "cls", "resource_type", "message"),
    [
        (
            "get",
            404,
            env("NotFound"),
            ResourceNotFoundError,
            "template",
            "Template 'tpl' not found",
        ),
        ("update", 404, None, ResourceNotFoundError, "template", "Template 'tpl' not found"),
        ("delete", 404, None, ResourceNotFoundError, "template", "Template 'tpl' not found"),
        (
            "update",
            409,
            env("NameConflict", "name taken"),
            ResourceNameConflictError,
            "template",
            "name taken",
        ),
        (
            "delete",
            409,
            env("InUse", "used by sb-1"),
            ResourceInUseError,
            "template",
            "used by sb-1",
        ),
        ("list", 404, None, SandboxAPIError, None, f"API endpoint not found: {URL}"),
        ("create", 409, env("AlreadyExists", "exists"), SandboxClientError, None, "exists"),
        ("create", 422, env("ValidationError", "bad"), ValidationError, None, "bad"),
        ("get", 500, env("InternalError", "oops"), SandboxAPIError, None, "oops"),
        ("get", 401, env("Unauthorized", "key?"), SandboxAuthenticationError, None, "key?"),
    ],
)
def test_template_mapping(
    op: _mapping.TemplateOp,
    status: int,
    body: Any,
    cls: type[Exception],
    resource_type: str | None,
    message: str,
) -> None:
    """Template endpoints map 404/409 per operation and fall through to the generic table."""
    exc = _mapping.template_error(wire(status, body), op=op, name="tpl", url=URL)
    assert type(exc) is cls
    assert str(exc).startswith(message)
    assert getattr(exc, "resource_type", None) == resource_type
    assert exc.status == status


def test_template_not_found_says_what_to_do() -> None:
    """The missing-template message points at create_template()."""
    exc = _mapping.template_error(wire(404), op="get", name="tpl", url=URL)
    assert "create_template()" in str(exc)


# -- Sandbox create (§2.2) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "cls", "attrs"),
    [
        (
            408,
            env("Timeout", "not ready after 30s (last status: provisioning)"),
            ResourceTimeoutError,
            {"resource_type": "sandbox"},
        ),
        (422, {"detail": PYDANTIC}, ValidationError, {"field": "cpu", "details": PYDANTIC}),
        (
            422,
            {"detail": [{"loc": ["body", "x"], "msg": "m", "type": "missing"}]},
            ResourceCreationError,
            {"resource_type": "sandbox", "error_type": None},
        ),
        (
            422,
            env("ImagePull", "no such image"),
            ResourceCreationError,
            {"resource_type": "sandbox", "error_type": "ImagePull"},
        ),
        (422, env("CrashLoop", "crashed"), ResourceCreationError, {"error_type": "CrashLoop"}),
        (
            422,
            env("ValidationError", "cpu too high"),
            ValidationError,
            {"error_type": "ValidationError", "field": None},
        ),
        (
            429,
            env("QuotaExceeded", "sandbox count limit"),
            QuotaExceededError,
            {"quota_type": "sandbox_count"},
        ),
        (
            503,
            env(None, "no capacity"),
            ResourceCreationError,
            {"resource_type": "sandbox", "error_type": "Unschedulable"},
        ),
        (503, env("NoNodes", "no capacity"), ResourceCreationError, {"error_type": "NoNodes"}),
        (
            404,
            env("NotFound", "Template 'x' not found"),
            ResourceNotFoundError,
            {"resource_type": "template"},
        ),
        (409, env("AlreadyExists", "dup"), SandboxClientError, {}),
        (400, env("Bad", "bad"), SandboxClientError, {}),
        (401, env("Unauthorized", "key"), SandboxAuthenticationError, {}),
        (500, env("InternalError", "boom"), SandboxAPIError, {}),
        (502, env("ConnectionError", "down"), SandboxConnectionError, {}),
    ],
)
def test_sandbox_create_mapping(
    status: int, body: Any, cls: type[Exception], attrs: dict[str, Any]
) -> None:
    """``POST /boxes`` errors map per the create table, else generically."""
    exc = _mapping.sandbox_create_error(wire(status, body))
    assert type(exc) is cls
    for name, value in attrs.items():
        assert getattr(exc, name) == value
    assert exc.status == status


def test_sandbox_create_error_strs() -> None:
    """Creation failures show their error type, timeouts the server's message verbatim."""
    assert str(_mapping.sandbox_create_error(wire(422, env("ImagePull", "no image")))) == (
        "no image [ImagePull]"
    )
    assert str(_mapping.sandbox_create_error(wire(408, env("Timeout", "slow")))) == "slow"


# -- Other sandbox endpoints (§2.2) ---------------------------------------------------------------


@pytest.mark.parametrize("op", ["get", "update", "delete", "status"])
def test_sandbox_not_found(op: _mapping.SandboxOp) -> None:
    """A 404 on a named sandbox gives ResourceNotFoundError(sandbox) naming it."""
    exc = _mapping.sandbox_error(wire(404), op=op, name="sb-9", url=URL)
    assert isinstance(exc, ResourceNotFoundError)
    assert exc.resource_type == "sandbox"
    assert str(exc).startswith("Sandbox 'sb-9' not found")


def test_sandbox_list_404_is_api_error() -> None:
    """A 404 on the list means a wrong endpoint."""
    exc = _mapping.sandbox_error(wire(404), op="list", name="", url=URL)
    assert type(exc) is SandboxAPIError
    assert str(exc) == f"API endpoint not found: {URL}. Check that api_endpoint is correct."


def test_sandbox_rename_conflict() -> None:
    """A 409 on update names the wanted name."""
    exc = _mapping.sandbox_error(
        wire(409, env("NameConflict")), op="update", name="a", url=URL, new_name="b"
    )
    assert isinstance(exc, ResourceNameConflictError)
    assert (str(exc), exc.resource_type) == ("Sandbox name 'b' already in use", "sandbox")


@pytest.mark.parametrize(
    ("op", "status", "cls"),
    [
        ("delete", 409, SandboxClientError),
        ("get", 500, SandboxAPIError),
        ("status", 403, SandboxAuthenticationError),
        ("list", 429, QuotaExceededError),
    ],
)
def test_sandbox_other_statuses_are_generic(
    op: _mapping.SandboxOp, status: int, cls: type[Exception]
) -> None:
    """Everything else on sandbox endpoints follows the generic table."""
    exc = _mapping.sandbox_error(wire(status, env("X")), op=op, name="a", url=URL)
    assert type(exc) is cls


# -- Data plane (§3.5) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "cls", "attrs"),
    [
        (
            400,
            env("WriteError"),
            SandboxOperationError,
            {"operation": "write", "error_type": "WriteError"},
        ),
        (404, env("WriteError"), SandboxOperationError, {"operation": "write"}),
        (
            400,
            env("ReadError"),
            SandboxOperationError,
            {"operation": "read", "error_type": "ReadError"},
        ),
        (
            500,
            env("CommandError"),
            SandboxOperationError,
            {"operation": "command", "error_type": "CommandError"},
        ),
        (
            403,
            env("Forbidden"),
            SandboxOperationError,
            {"operation": None, "error_type": "PermissionDenied"},
        ),
        (502, env("ConnectionError"), SandboxConnectionError, {}),
        (400, env("NotReady"), SandboxNotReadyError, {}),
        (404, env("NotFound"), ResourceNotFoundError, {"resource_type": "file"}),
        (400, env("FileNotFound"), ResourceNotFoundError, {"resource_type": "file"}),
        (401, env("Unauthorized"), SandboxClientError, {}),
        (500, env("InternalError"), SandboxClientError, {}),
        (502, env("BadGateway"), SandboxClientError, {}),
        (409, env("NotReady"), SandboxClientError, {}),
    ],
)
def test_dataplane_mapping(
    status: int, body: Any, cls: type[Exception], attrs: dict[str, Any]
) -> None:
    """Data-plane errors follow §3.5's rules in order."""
    exc = _mapping.dataplane_error(wire(status, body))
    assert type(exc) is cls
    for name, value in attrs.items():
        assert getattr(exc, name) == value
    assert exc.status == status


def test_download_404_names_file_and_sandbox() -> None:
    """A 404 on download names the path and the sandbox."""
    exc = _mapping.download_error(wire(404, env("FileNotFound")), path="/x", sandbox_name="sb")
    assert isinstance(exc, ResourceNotFoundError)
    assert (str(exc), exc.resource_type) == ("File '/x' not found in sandbox 'sb'", "file")
    other = _mapping.download_error(wire(400, env("ReadError", "io")), path="/x", sandbox_name="sb")
    assert isinstance(other, SandboxOperationError)
    assert str(other) == "io [ReadError]"
