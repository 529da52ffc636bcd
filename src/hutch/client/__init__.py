"""The hutch Python SDK (async written by hand, sync generated from it).

Import from :mod:`hutch`; this package's own modules are private.
"""

from hutch.client._async_client import AsyncSandboxClient
from hutch.client._async_sandbox import AsyncSandbox
from hutch.client._async_sandbox_files import AsyncServiceURL
from hutch.client._async_stream import AsyncCommandHandle
from hutch.client._async_tunnel import AsyncTunnel
from hutch.client._errors import (
    CommandTimeoutError,
    DataplaneNotConfiguredError,
    QuotaExceededError,
    ResourceAlreadyExistsError,
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
    SandboxServerReloadError,
    TunnelConnectionRefusedError,
    TunnelError,
    TunnelPortNotAllowedError,
    TunnelUnsupportedVersionError,
    ValidationError,
)
from hutch.client._models import (
    DownloadURL,
    ExecutionResult,
    FileChunk,
    FileInfo,
    FileStat,
    GlobResult,
    GrepMatch,
    GrepResult,
    OutputChunk,
    ResourceSpec,
    ResourceStatus,
    RunConfig,
    SandboxTemplate,
    Snapshot,
    SnapshotTag,
    VolumeMountSpec,
)
from hutch.client._sync_client import SandboxClient
from hutch.client._sync_sandbox import Sandbox
from hutch.client._sync_sandbox_files import ServiceURL
from hutch.client._sync_stream import CommandHandle
from hutch.client._sync_tunnel import Tunnel

__all__ = [
    "AsyncCommandHandle",
    "AsyncSandbox",
    "AsyncSandboxClient",
    "AsyncServiceURL",
    "AsyncTunnel",
    "CommandHandle",
    "CommandTimeoutError",
    "DataplaneNotConfiguredError",
    "DownloadURL",
    "ExecutionResult",
    "FileChunk",
    "FileInfo",
    "FileStat",
    "GlobResult",
    "GrepMatch",
    "GrepResult",
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
    "RunConfig",
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
    "ServiceURL",
    "Snapshot",
    "SnapshotTag",
    "Tunnel",
    "TunnelConnectionRefusedError",
    "TunnelError",
    "TunnelPortNotAllowedError",
    "TunnelUnsupportedVersionError",
    "ValidationError",
    "VolumeMountSpec",
]
