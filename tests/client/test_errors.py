"""The SDK's exception classes (spec Appendix A)."""

from __future__ import annotations

import inspect

import pytest

import hutch
from hutch import (
    CommandTimeoutError,
    QuotaExceededError,
    ResourceAlreadyExistsError,
    ResourceCreationError,
    ResourceInUseError,
    ResourceNameConflictError,
    ResourceNotFoundError,
    ResourceTimeoutError,
    SandboxClientError,
    SandboxConnectionError,
    SandboxOperationError,
    SandboxServerReloadError,
    TunnelConnectionRefusedError,
    TunnelError,
    TunnelPortNotAllowedError,
    TunnelUnsupportedVersionError,
    ValidationError,
)

EXCEPTIONS = [
    getattr(hutch, name)
    for name in hutch.__all__
    if isinstance(getattr(hutch, name), type) and issubclass(getattr(hutch, name), Exception)
]


def test_all_public_exceptions_exported() -> None:
    """The public surface holds the 21 exception classes of Appendix A."""
    assert len(EXCEPTIONS) == 21


@pytest.mark.parametrize("cls", EXCEPTIONS, ids=lambda cls: cls.__name__)
def test_every_exception_derives_from_the_root(cls: type[Exception]) -> None:
    """Every public exception is a SandboxClientError, and the root is a plain Exception."""
    assert issubclass(cls, SandboxClientError)
    assert SandboxClientError.__mro__[1] is Exception


@pytest.mark.parametrize("cls", EXCEPTIONS, ids=lambda cls: cls.__name__)
def test_status_defaults_to_none(cls: type[Exception]) -> None:
    """An exception not built from a response has ``status`` None."""
    kwargs = {"port": 1} if "port" in inspect.signature(cls.__init__).parameters else {}
    exc = cls("boom", **kwargs)
    assert exc.status is None  # type: ignore[attr-defined]


def test_subclass_tree() -> None:
    """The intermediate bases of Appendix A hold."""
    assert issubclass(SandboxServerReloadError, SandboxConnectionError)
    assert issubclass(CommandTimeoutError, SandboxOperationError)
    for cls in (
        TunnelPortNotAllowedError,
        TunnelConnectionRefusedError,
        TunnelUnsupportedVersionError,
    ):
        assert issubclass(cls, TunnelError)


def test_resource_timeout_str_appends_last_status() -> None:
    """ResourceTimeoutError's str ends with the last status only when there is one."""
    assert str(ResourceTimeoutError("late", "sandbox", last_status="provisioning")) == (
        "late (last_status: provisioning)"
    )
    assert str(ResourceTimeoutError("late", "sandbox")) == "late"
    exc = ResourceTimeoutError("late", resource_type="sandbox", last_status="x")
    assert (exc.resource_type, exc.last_status) == ("sandbox", "x")


def test_creation_error_str_appends_error_type() -> None:
    """ResourceCreationError's str ends with ``[error_type]`` when set."""
    exc = ResourceCreationError("pull failed", "sandbox", "ImagePull")
    assert str(exc) == "pull failed [ImagePull]"
    assert (exc.resource_type, exc.error_type) == ("sandbox", "ImagePull")
    assert str(ResourceCreationError("failed")) == "failed"


def test_operation_error_str_appends_error_type() -> None:
    """SandboxOperationError's str ends with ``[error_type]`` when set."""
    exc = SandboxOperationError("disk full", operation="write", error_type="WriteError")
    assert str(exc) == "disk full [WriteError]"
    assert exc.operation == "write"
    assert str(SandboxOperationError("x")) == "x"


def test_command_timeout_error_fields() -> None:
    """CommandTimeoutError is a command operation of type CommandTimeout carrying its timeout."""
    exc = CommandTimeoutError("too slow", timeout=10)
    assert (exc.operation, exc.error_type, exc.timeout) == ("command", "CommandTimeout", 10)
    assert str(exc) == "too slow [CommandTimeout]"


def test_validation_error_fields() -> None:
    """ValidationError keeps field, details (default []) and error_type."""
    exc = ValidationError("bad", field="cpu", details=[{"msg": "x"}], error_type="ValidationError")
    assert (exc.field, exc.details, exc.error_type) == ("cpu", [{"msg": "x"}], "ValidationError")
    assert ValidationError("bad").details == []


@pytest.mark.parametrize(
    "cls",
    [
        ResourceNotFoundError,
        ResourceInUseError,
        ResourceAlreadyExistsError,
        ResourceNameConflictError,
    ],
)
def test_resource_type_errors(cls: type[ResourceNotFoundError]) -> None:
    """The resource errors take ``resource_type`` positionally or by keyword, default None."""
    assert cls("m", "template").resource_type == "template"
    assert cls("m").resource_type is None
    assert str(cls("m", resource_type="x")) == "m"


def test_quota_and_tunnel_attributes() -> None:
    """QuotaExceededError carries quota_type; tunnel errors take ``port`` by keyword only."""
    assert QuotaExceededError("q", quota_type="cpu").quota_type == "cpu"
    assert TunnelPortNotAllowedError("no", port=22).port == 22
    assert TunnelConnectionRefusedError("no", port=5432).port == 5432
    with pytest.raises(TypeError):
        TunnelPortNotAllowedError("no", 22)  # type: ignore[call-arg]
