"""The SDK's exception classes (spec Appendix A).

Every public exception derives from :class:`SandboxClientError` and carries its context as
attributes. Constructor signatures match the ``langsmith`` sandbox SDK so that user code can move
between the two by changing the import. Every instance also has ``status``: the HTTP status of the
response it was built from, or ``None`` when the error did not come from a response.
"""

from __future__ import annotations

from typing import Any


class SandboxClientError(Exception):
    """Root of every error the hutch SDK raises."""

    #: HTTP status of the response this error came from, if any (set by the SDK's error mapping).
    status: int | None = None


class SandboxAPIError(SandboxClientError):
    """The server answered unexpectedly (500, or an endpoint that does not exist)."""


class SandboxAuthenticationError(SandboxClientError):
    """The API key is missing or was rejected (control plane 401/403)."""


class SandboxConnectionError(SandboxClientError):
    """The server could not be reached, or did not answer in time."""


class SandboxServerReloadError(SandboxConnectionError):
    """The server closed a WebSocket with 1001 (going away): it is restarting."""


class ResourceNotFoundError(SandboxClientError):
    """A resource does not exist.

    Attributes:
        resource_type: ``"sandbox"``, ``"template"``, ``"file"``, …, or ``None`` when unknown.
    """

    def __init__(self, message: str, resource_type: str | None = None) -> None:
        super().__init__(message)
        self.resource_type = resource_type


class ResourceTimeoutError(SandboxClientError):
    """A resource did not reach the expected state in time.

    Attributes:
        resource_type: The kind of resource that timed out.
        last_status: The last status seen before giving up, if known.
    """

    def __init__(
        self,
        message: str,
        resource_type: str | None = None,
        last_status: str | None = None,
    ) -> None:
        super().__init__(message)
        self.resource_type = resource_type
        self.last_status = last_status

    def __str__(self) -> str:
        base = super().__str__()
        if self.last_status:
            return f"{base} (last_status: {self.last_status})"
        return base


class ResourceInUseError(SandboxClientError):
    """A resource cannot be deleted because others still use it."""

    def __init__(self, message: str, resource_type: str | None = None) -> None:
        super().__init__(message)
        self.resource_type = resource_type


class ResourceAlreadyExistsError(SandboxClientError):
    """A resource with that name already exists."""

    def __init__(self, message: str, resource_type: str | None = None) -> None:
        super().__init__(message)
        self.resource_type = resource_type


class ResourceNameConflictError(SandboxClientError):
    """A rename would collide with an existing resource's name."""

    def __init__(self, message: str, resource_type: str | None = None) -> None:
        super().__init__(message)
        self.resource_type = resource_type


class ValidationError(SandboxClientError):
    """The server rejected the request's values.

    Attributes:
        field: The offending field (last element of the first pydantic ``loc``), if known.
        details: The pydantic-style detail list, or ``[]``.
        error_type: The machine-readable ``detail.error``, if any.
    """

    def __init__(
        self,
        message: str,
        field: str | None = None,
        details: list[dict[str, Any]] | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.details: list[dict[str, Any]] = details or []
        self.error_type = error_type


class QuotaExceededError(SandboxClientError):
    """A quota would be exceeded.

    Attributes:
        quota_type: ``"sandbox_count"``, ``"cpu"``, ``"memory"``, ``"volume_count"``,
            ``"storage"`` or ``None`` (spec §2.0).
    """

    def __init__(self, message: str, quota_type: str | None = None) -> None:
        super().__init__(message)
        self.quota_type = quota_type


class ResourceCreationError(SandboxClientError):
    """Provisioning a resource failed.

    Attributes:
        resource_type: The kind of resource.
        error_type: Why, e.g. ``"ImagePull"``, ``"CrashLoop"``, ``"SandboxConfig"``,
            ``"Unschedulable"``.
    """

    def __init__(
        self,
        message: str,
        resource_type: str | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.resource_type = resource_type
        self.error_type = error_type

    def __str__(self) -> str:
        base = super().__str__()
        if self.error_type:
            return f"{base} [{self.error_type}]"
        return base


class DataplaneNotConfiguredError(SandboxClientError):
    """The sandbox has no ``dataplane_url``, so commands and files are unavailable."""


class SandboxNotReadyError(SandboxClientError):
    """The sandbox is not ready for commands or file operations yet."""


class SandboxOperationError(SandboxClientError):
    """A command, read or write inside the sandbox failed.

    Attributes:
        operation: ``"command"``, ``"read"``, ``"write"`` or ``None``.
        error_type: The machine-readable error type, if any.
    """

    def __init__(
        self,
        message: str,
        operation: str | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.error_type = error_type

    def __str__(self) -> str:
        base = super().__str__()
        if self.error_type:
            return f"{base} [{self.error_type}]"
        return base


class CommandTimeoutError(SandboxOperationError):
    """A command ran longer than its timeout.

    Attributes:
        timeout: The timeout in seconds that was exceeded, if known.
    """

    def __init__(self, message: str, timeout: int | None = None) -> None:
        super().__init__(message, operation="command", error_type="CommandTimeout")
        self.timeout = timeout


class TunnelError(SandboxClientError):
    """Base of the TCP tunnel errors."""


class TunnelPortNotAllowedError(TunnelError):
    """The sandbox refused to tunnel to that port."""

    def __init__(self, message: str, *, port: int) -> None:
        super().__init__(message)
        self.port = port


class TunnelConnectionRefusedError(TunnelError):
    """Nothing listens on that port inside the sandbox."""

    def __init__(self, message: str, *, port: int) -> None:
        super().__init__(message)
        self.port = port


class TunnelUnsupportedVersionError(TunnelError):
    """The tunnel peer speaks an unsupported protocol version."""


__all__ = [
    "CommandTimeoutError",
    "DataplaneNotConfiguredError",
    "QuotaExceededError",
    "ResourceAlreadyExistsError",
    "ResourceCreationError",
    "ResourceInUseError",
    "ResourceNameConflictError",
    "ResourceNotFoundError",
    "ResourceTimeoutError",
    "SandboxAPIError",
    "SandboxAuthenticationError",
    "SandboxClientError",
    "SandboxConnectionError",
    "SandboxNotReadyError",
    "SandboxOperationError",
    "SandboxServerReloadError",
    "TunnelConnectionRefusedError",
    "TunnelError",
    "TunnelPortNotAllowedError",
    "TunnelUnsupportedVersionError",
    "ValidationError",
]
