"""The public surface: ``hutch.__all__`` and the sync/async API parity."""

from __future__ import annotations

import inspect
import types

import pytest

import hutch
from hutch import (
    AsyncCommandHandle,
    AsyncSandbox,
    AsyncSandboxClient,
    AsyncServiceURL,
    AsyncTunnel,
    CommandHandle,
    Sandbox,
    SandboxClient,
    ServiceURL,
    Tunnel,
)

EXPECTED = {
    "SandboxClient",
    "AsyncSandboxClient",
    "Sandbox",
    "AsyncSandbox",
    "CommandHandle",
    "AsyncCommandHandle",
    "Tunnel",
    "AsyncTunnel",
    "ExecutionResult",
    "OutputChunk",
    "ResourceSpec",
    "ResourceStatus",
    "SandboxTemplate",
    "VolumeMountSpec",
    "RunConfig",
    "Snapshot",
    "SnapshotTag",
    "DownloadURL",
    "FileChunk",
    "FileInfo",
    "FileStat",
    "GlobResult",
    "GrepMatch",
    "GrepResult",
    "AsyncServiceURL",
    "ServiceURL",
    "SandboxClientError",
    "SandboxAPIError",
    "SandboxAuthenticationError",
    "SandboxConnectionError",
    "SandboxServerReloadError",
    "ResourceNotFoundError",
    "ResourceTimeoutError",
    "ResourceInUseError",
    "ResourceAlreadyExistsError",
    "ResourceNameConflictError",
    "ValidationError",
    "QuotaExceededError",
    "ResourceCreationError",
    "DataplaneNotConfiguredError",
    "SandboxNotReadyError",
    "SandboxOperationError",
    "CommandTimeoutError",
    "TunnelError",
    "TunnelPortNotAllowedError",
    "TunnelConnectionRefusedError",
    "TunnelUnsupportedVersionError",
}

CLIENT_METHODS = {
    "create_template",
    "list_templates",
    "get_template",
    "update_template",
    "delete_template",
    "sandbox",
    "create_sandbox",
    "get_sandbox",
    "list_sandboxes",
    "update_sandbox",
    "delete_sandbox",
    "get_sandbox_status",
    "wait_for_sandbox",
    "create_snapshot",
    "capture_snapshot",
    "get_snapshot",
    "list_snapshots",
    "list_snapshot_tags",
    "delete_snapshot",
    "wait_for_snapshot",
}


def test_all_is_exactly_the_public_surface() -> None:
    """``__all__`` lists the documented names, each importable, and nothing else public."""
    assert set(hutch.__all__) == EXPECTED
    assert len(hutch.__all__) == len(EXPECTED)
    for name in hutch.__all__:
        assert getattr(hutch, name) is not None
    # Subpackages appear as attributes once anything imports them; they are not API names.
    public = {
        n
        for n, v in vars(hutch).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public <= set(hutch.__all__)


def test_star_import() -> None:
    """``from hutch import *`` brings every name of ``__all__``."""
    namespace: dict[str, object] = {}
    exec("from hutch import *", namespace)
    assert set(hutch.__all__) <= set(namespace)


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    """Public methods of ``cls`` and its bases (the clients inherit their snapshot calls)."""
    members: dict[str, object] = {}
    for klass in reversed(cls.__mro__[:-1]):  # without ``object``
        members.update(vars(klass))
    return {
        name: inspect.signature(member)  # type: ignore[arg-type]
        for name, member in members.items()
        if callable(member) and not name.startswith("_")
    }


def shape(sig: inspect.Signature) -> list[tuple[str, object, object]]:
    """Names, kinds and defaults of a signature (annotations differ between sync and async)."""
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize(
    ("sync_cls", "async_cls"),
    [
        (SandboxClient, AsyncSandboxClient),
        (Sandbox, AsyncSandbox),
        (CommandHandle, AsyncCommandHandle),
        (Tunnel, AsyncTunnel),
        (ServiceURL, AsyncServiceURL),
    ],
)
def test_sync_and_async_have_the_same_api(sync_cls: type, async_cls: type) -> None:
    """Sync and async classes have the same public methods with the same parameters."""
    sync_methods = public_methods(sync_cls)
    async_methods = public_methods(async_cls)
    renamed = {"aclose": "close"}
    assert set(sync_methods) == {renamed.get(n, n) for n in async_methods}
    for name, sig in async_methods.items():
        assert shape(sync_methods[renamed.get(name, name)]) == shape(sig), name
    if sync_cls is not Tunnel:  # tunnels are made by sb.tunnel(), never constructed by users
        assert shape(inspect.signature(sync_cls)) == shape(inspect.signature(async_cls))


def test_client_methods_match_the_documented_surface() -> None:
    """The client offers the documented calls, with langsmith's defaults."""
    assert set(public_methods(SandboxClient)) >= CLIENT_METHODS
    init = inspect.signature(SandboxClient)
    assert {n: p.default for n, p in init.parameters.items() if not n.startswith("_")} == {
        "api_endpoint": None,
        "timeout": 10.0,
        "api_key": None,
        "max_retries": 3,
        "headers": None,
    }
    create = inspect.signature(SandboxClient.create_sandbox).parameters
    assert (create["timeout"].default, create["wait_for_ready"].default) == (30, True)
    for kw in ("snapshot_id", "snapshot", "run_config", "labels"):
        assert create[kw].kind is inspect.Parameter.KEYWORD_ONLY and create[kw].default is None
    snap = inspect.signature(SandboxClient.create_snapshot).parameters
    assert list(snap)[1:4] == ["name", "docker_image", "fs_capacity_bytes"]
    assert (snap["tag"].default, snap["timeout"].default) == (None, 60)
    wait = inspect.signature(SandboxClient.wait_for_snapshot).parameters
    assert (wait["timeout"].default, wait["poll_interval"].default) == (300, 2.0)
    run = inspect.signature(Sandbox.run).parameters
    assert {
        n: run[n].default
        for n in (
            "timeout",
            "shell",
            "wait",
            "idle_timeout",
            "kill_on_disconnect",
            "ttl_seconds",
            "pty",
        )
    } == {
        "timeout": 60,
        "shell": "/bin/bash",
        "wait": True,
        "idle_timeout": 300,
        "kill_on_disconnect": False,
        "ttl_seconds": 600,
        "pty": False,
    }


def test_async_methods_are_coroutines() -> None:
    """Every I/O method of the async classes is a coroutine function; none of the sync ones is."""
    async_classes: tuple[type, ...] = (AsyncSandboxClient, AsyncSandbox, AsyncCommandHandle)
    sync_classes: tuple[type, ...] = (SandboxClient, Sandbox, CommandHandle)
    for cls in async_classes:
        for name in public_methods(cls):
            if name != "from_dict":
                assert inspect.iscoroutinefunction(getattr(cls, name)), name
    for cls in sync_classes:
        for name in public_methods(cls):
            assert not inspect.iscoroutinefunction(getattr(cls, name)), name


def test_command_handles_offer_the_documented_calls() -> None:
    """Both handles have langsmith's members; ``await handle.result`` works on the async one."""
    members = {
        "command_id",
        "pid",
        "result",
        "send_input",
        "kill",
        "reconnect",
        "last_stdout_offset",
        "last_stderr_offset",
        "MAX_AUTO_RECONNECTS",
    }
    for cls in (CommandHandle, AsyncCommandHandle):
        assert members <= set(dir(cls)), cls
        assert cls.MAX_AUTO_RECONNECTS == 5
    assert isinstance(vars(AsyncCommandHandle)["result"], property)
    assert inspect.iscoroutinefunction(vars(AsyncCommandHandle)["result"].fget)
    assert hasattr(AsyncCommandHandle, "__aiter__") and hasattr(AsyncCommandHandle, "__anext__")
    assert hasattr(CommandHandle, "__iter__") and hasattr(CommandHandle, "__next__")
    run = inspect.signature(Sandbox.run).parameters
    assert list(run)[:15] == [
        "self",
        "command",
        "timeout",
        "env",
        "cwd",
        "shell",
        "on_stdout",
        "on_stderr",
        "idle_timeout",
        "kill_on_disconnect",
        "ttl_seconds",
        "pty",
        "headers",
        "wait",
        "command_id",
    ]
    reconnect = inspect.signature(Sandbox.reconnect).parameters
    assert {n: p.default for n, p in reconnect.items() if n not in ("self", "command_id")} == {
        "stdout_offset": 0,
        "stderr_offset": 0,
        "headers": None,
        "keep_output": True,  # hutch extension, after the documented ones
    }
