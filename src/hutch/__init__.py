"""hutch: a self-hosted sandbox service, and its Python SDK.

Example::

    from hutch import SandboxClient

    with SandboxClient() as client, client.sandbox("python-sandbox") as sb:
        print(sb.run("python -c 'print(2 + 2)'").stdout)
"""

from hutch.client import (
    AsyncSandbox,
    AsyncSandboxClient,
    CommandTimeoutError,
    DataplaneNotConfiguredError,
    ExecutionResult,
    OutputChunk,
    QuotaExceededError,
    ResourceAlreadyExistsError,
    ResourceCreationError,
    ResourceInUseError,
    ResourceNameConflictError,
    ResourceNotFoundError,
    ResourceSpec,
    ResourceStatus,
    ResourceTimeoutError,
    Sandbox,
    SandboxAPIError,
    SandboxAuthenticationError,
    SandboxClient,
    SandboxClientError,
    SandboxConnectionError,
    SandboxNotReadyError,
    SandboxOperationError,
    SandboxServerReloadError,
    SandboxTemplate,
    TunnelConnectionRefusedError,
    TunnelError,
    TunnelPortNotAllowedError,
    TunnelUnsupportedVersionError,
    ValidationError,
    VolumeMountSpec,
)

__all__ = [
    "AsyncSandbox",
    "AsyncSandboxClient",
    "CommandTimeoutError",
    "DataplaneNotConfiguredError",
    "ExecutionResult",
    "OutputChunk",
    "QuotaExceededError",
    "ResourceAlreadyExistsError",
    "ResourceCreationError",
    "ResourceInUseError",
    "ResourceNameConflictError",
    "ResourceNotFoundError",
    "ResourceSpec",
    "ResourceStatus",
    "ResourceTimeoutError",
    "Sandbox",
    "SandboxAPIError",
    "SandboxAuthenticationError",
    "SandboxClient",
    "SandboxClientError",
    "SandboxConnectionError",
    "SandboxNotReadyError",
    "SandboxOperationError",
    "SandboxServerReloadError",
    "SandboxTemplate",
    "TunnelConnectionRefusedError",
    "TunnelError",
    "TunnelPortNotAllowedError",
    "TunnelUnsupportedVersionError",
    "ValidationError",
    "VolumeMountSpec",
]
