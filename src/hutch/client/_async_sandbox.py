"""The async SDK's sandbox: :class:`AsyncSandbox`, one sandbox's data plane (commands, files,
tunnels) and its lifecycle calls through the client that made it.

Written by hand. ``scripts/gen_sync.py`` generates the sync twin (``_sync_sandbox.py``) from this
file: keep every async-only name in that script's replacement table, and run it after editing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, overload

from hutch.client._async_http import RequestHeaders
from hutch.client._async_sandbox_files import AsyncSandboxFilesMixin
from hutch.client._async_snapshots import RunConfigArg
from hutch.client._async_stream import AsyncCommandHandle, ExecEndpoint, OutputCallback
from hutch.client._async_tunnel import AsyncTunnel
from hutch.client._errors import SandboxClientError, SandboxConnectionError
from hutch.client._mapping import dataplane_error
from hutch.client._models import ExecutionResult, RunConfig, Snapshot, run_config_from
from hutch.protocol._exec import Execute, Reconnect

if TYPE_CHECKING:
    from hutch.client._async_client import AsyncSandboxClient

logger = logging.getLogger("hutch.client")


# What makes ``run()`` fall back from the WebSocket to HTTP ``/execute`` (spec §4.6, §5): raised
# only while opening the connection, before the command was sent, so it never runs twice.
_WS_FALLBACK_ERRORS = (SandboxConnectionError, ImportError, OSError)


def _execute_message(
    command: str,
    *,
    timeout: int | None,
    shell: str,
    idle_timeout: int | None,
    kill_on_disconnect: bool,
    ttl_seconds: int | None,
    env: dict[str, str] | None,
    cwd: str | None,
    pty: bool,
    command_id: str | None,
    close_stdin: bool,
) -> Execute:
    """The ``execute`` message of ``run()``'s arguments: ``None`` becomes the wire's "no limit"
    (timeout 0, idle timeout and TTL -1, spec §4.2).

    Raises:
        ValueError: An argument is out of range or malformed.
    """
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds (0 or None: no limit), got {timeout}")
    if idle_timeout is not None and idle_timeout < -1:
        raise ValueError(
            f"idle_timeout must be >= 0 seconds (-1 or None: never), got {idle_timeout}"
        )
    if ttl_seconds is not None and ttl_seconds < -1:
        raise ValueError(f"ttl_seconds must be >= 0 (-1 or None: forever), got {ttl_seconds}")
    return Execute(
        command=command,
        timeout_seconds=0 if timeout is None else timeout,
        shell=shell,
        idle_timeout_seconds=-1 if idle_timeout is None else idle_timeout,
        kill_on_disconnect=kill_on_disconnect,
        ttl_seconds=-1 if ttl_seconds is None else ttl_seconds,
        env=env,
        cwd=cwd,
        pty=pty,
        command_id=command_id,
        close_stdin=close_stdin,
    )


@dataclass
class AsyncSandbox(AsyncSandboxFilesMixin):
    """A sandbox: run commands in it and read or write its files.

    Obtained from :meth:`AsyncSandboxClient.create_sandbox` and friends. Used in ``async with``,
    it deletes the sandbox on exit if it came from :meth:`AsyncSandboxClient.sandbox`.

    Attributes:
        name: Its name.
        template_name: The template it was created from.
        dataplane_url: Where its commands and files are served; ``None`` blocks those.
        id: Its unique id, if the server sent one.
        status: ``"provisioning"``, ``"ready"``, ``"stopped"`` or ``"failed"`` (``None`` if the
            server sent null).
        status_message: Why it failed, if it did.
        created_at: Creation time (ISO 8601).
        updated_at: Last update time (ISO 8601).
        ttl_seconds: Lifetime from creation (0: none).
        idle_ttl_seconds: Lifetime without activity (0: none).
        expires_at: When the TTLs will delete it, if set.
        snapshot_id: The snapshot it booted from, if any.
        run_config: What its commands run with (snapshot's layer, then its own); None from
            servers without run_config.
        labels: Its labels.
        persistent: False when what it writes is thrown away at each stop.
    """

    name: str
    template_name: str
    dataplane_url: str | None = None
    id: str | None = None
    status: str | None = "ready"
    status_message: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    ttl_seconds: int | None = None
    idle_ttl_seconds: int | None = None
    expires_at: str | None = None
    snapshot_id: str | None = None
    run_config: RunConfig | None = None
    labels: dict[str, str] = field(default_factory=dict)
    persistent: bool = True
    _client: AsyncSandboxClient = field(kw_only=True, repr=False, compare=False)
    _auto_delete: bool = field(default=False, kw_only=True, repr=False, compare=False)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, client: AsyncSandboxClient, auto_delete: bool = False
    ) -> AsyncSandbox:
        """Build from a sandbox object of the API (defaults per spec §7)."""
        labels = data.get("labels")
        return cls(
            name=data.get("name", ""),
            # Snapshot-era sandboxes have no template: null reads as "".
            template_name=data.get("template_name") or "",
            dataplane_url=data.get("dataplane_url"),
            id=data.get("id"),
            status=data.get("status", "ready"),
            status_message=data.get("status_message"),
            created_at=data.get("created_at"),
            updated_at=data.get("updated_at"),
            ttl_seconds=data.get("ttl_seconds"),
            idle_ttl_seconds=data.get("idle_ttl_seconds"),
            expires_at=data.get("expires_at"),
            snapshot_id=data.get("snapshot_id"),
            run_config=run_config_from(data.get("run_config")),
            labels=dict(labels) if isinstance(labels, Mapping) else {},
            persistent=data.get("persistent") is not False,
            _client=client,
            _auto_delete=auto_delete,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._auto_delete:
            try:
                await self._client.delete_sandbox(self.name)
            except SandboxClientError as error:
                # Cleanup must not hide the block's own outcome (spec §2.2).
                logger.debug("deleting sandbox %r on exit failed: %s", self.name, error)

    async def delete(self, *, headers: RequestHeaders = None) -> None:
        """Delete this sandbox.

        Raises:
            ResourceNotFoundError: It no longer exists.
        """
        await self._client.delete_sandbox(self.name, headers=headers)

    async def start(self, *, timeout: int = 120, headers: RequestHeaders = None) -> None:
        """Start it after :meth:`stop` and wait until it is ready (updates this object)."""
        fresh = await self._client.start_sandbox(self.name, timeout=timeout, headers=headers)
        self.status, self.dataplane_url = fresh.status, fresh.dataplane_url

    async def stop(self, *, headers: RequestHeaders = None) -> None:
        """Stop it, keeping its files (updates this object's status to ``"stopped"``)."""
        await self._client.stop_sandbox(self.name, headers=headers)
        self.status = "stopped"

    async def capture_snapshot(
        self,
        name: str,
        *,
        tag: str | None = None,
        fs_capacity_bytes: int | None = None,
        run_config: RunConfigArg = None,
        timeout: int = 60,
        headers: RequestHeaders = None,
    ) -> Snapshot:
        """Keep this sandbox's files as a new snapshot named ``name`` (see
        :meth:`AsyncSandboxClient.capture_snapshot`)."""
        return await self._client.capture_snapshot(
            self.name,
            name,
            tag=tag,
            fs_capacity_bytes=fs_capacity_bytes,
            run_config=run_config,
            timeout=timeout,
            headers=headers,
        )

    @overload
    async def run(
        self,
        command: str,
        *,
        timeout: int | None = ...,
        env: dict[str, str] | None = ...,
        cwd: str | None = ...,
        shell: str = ...,
        on_stdout: OutputCallback | None = ...,
        on_stderr: OutputCallback | None = ...,
        idle_timeout: int | None = ...,
        kill_on_disconnect: bool = ...,
        ttl_seconds: int | None = ...,
        pty: bool = ...,
        headers: RequestHeaders = ...,
        wait: Literal[True] = ...,
        command_id: str | None = ...,
        stdin: str | None = ...,
        keep_output: bool = ...,
    ) -> ExecutionResult: ...

    @overload
    async def run(
        self,
        command: str,
        *,
        timeout: int | None = ...,
        env: dict[str, str] | None = ...,
        cwd: str | None = ...,
        shell: str = ...,
        on_stdout: None = ...,
        on_stderr: None = ...,
        idle_timeout: int | None = ...,
        kill_on_disconnect: bool = ...,
        ttl_seconds: int | None = ...,
        pty: bool = ...,
        headers: RequestHeaders = ...,
        wait: Literal[False],
        command_id: str | None = ...,
        stdin: str | None = ...,
        keep_output: bool = ...,
    ) -> AsyncCommandHandle: ...

    @overload
    async def run(
        self,
        command: str,
        *,
        timeout: int | None = ...,
        env: dict[str, str] | None = ...,
        cwd: str | None = ...,
        shell: str = ...,
        on_stdout: OutputCallback | None = ...,
        on_stderr: OutputCallback | None = ...,
        idle_timeout: int | None = ...,
        kill_on_disconnect: bool = ...,
        ttl_seconds: int | None = ...,
        pty: bool = ...,
        headers: RequestHeaders = ...,
        wait: bool = ...,
        command_id: str | None = ...,
        stdin: str | None = ...,
        keep_output: bool = ...,
    ) -> ExecutionResult | AsyncCommandHandle: ...

    async def run(
        self,
        command: str,
        *,
        timeout: int | None = 60,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        shell: str = "/bin/bash",
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        idle_timeout: int | None = 300,
        kill_on_disconnect: bool = False,
        ttl_seconds: int | None = 600,
        pty: bool = False,
        headers: RequestHeaders = None,
        wait: bool = True,
        command_id: str | None = None,
        stdin: str | None = None,
        keep_output: bool = True,
    ) -> ExecutionResult | AsyncCommandHandle:
        """Run ``<shell> -c <command>`` in the sandbox.

        Streams over the WebSocket ``/execute/ws`` (spec §4). With ``wait=True`` and no callbacks
        (or ``stdin``), a server or client without WebSocket support is served over HTTP
        ``/execute`` instead, but only if the WebSocket failed before the command was sent: a
        command never runs twice. A connection lost while the command runs is resumed from the
        byte offsets received (see :class:`AsyncCommandHandle`).

        Args:
            command: Shell command line.
            timeout: Seconds before the server kills the command; 0 or ``None``: no limit.
            env: Variables merged over the sandbox environment.
            cwd: Working directory (default: the sandbox's).
            shell: The shell that runs ``command``.
            on_stdout: Called with each piece of stdout as it arrives (WebSocket only).
            on_stderr: Called with each piece of stderr as it arrives (WebSocket only).
            idle_timeout: Seconds the command may run with no client attached before the server
                kills it; -1 or ``None``: never.
            kill_on_disconnect: Kill the command as soon as its last client detaches.
            ttl_seconds: How long the server keeps a finished command's output and exit code for
                ``reconnect()``; -1 or ``None``: forever.
            pty: Run in a pseudo-terminal (stdout and stderr merged into stdout).
            headers: Extra headers for this call (also sent on the WebSocket upgrade).
            wait: ``False`` returns an :class:`AsyncCommandHandle` as soon as the command started.
            command_id: hutch extension: the id to give the command (letters, digits, ``._:-``)
                instead of the server's; servers that support it attach to an existing command
                with that id rather than start a second one.
            stdin: hutch extension: text written to the command's stdin, which is then closed
                (``""``: closed at once). Needs a server that supports ``close_stdin``.
            keep_output: hutch extension: ``False`` passes output only to the handle's iterator
                and the callbacks, and the result's ``stdout`` and ``stderr`` are empty: the
                handle's memory stays flat however much a long-lived command prints.

        Returns:
            The :class:`ExecutionResult` (``wait=True``), or an :class:`AsyncCommandHandle`.

        Raises:
            ValueError: ``wait=False`` with callbacks, or an invalid argument.
            ImportError: Streaming was asked for without the ``websockets`` package.
            SandboxNotReadyError: The sandbox is not ready.
            DataplaneNotConfiguredError: The sandbox has no data-plane URL.
            CommandTimeoutError: The command exceeded ``timeout`` (WebSocket only; over HTTP the
                server answers with the partial output and exit code 124).
            SandboxOperationError: The command could not be run.
            SandboxConnectionError: The sandbox could not be reached, or the connection was lost
                for good.
        """
        if not wait and (on_stdout is not None or on_stderr is not None):
            raise ValueError(
                "Cannot combine wait=False with on_stdout/on_stderr: iterate the handle "
                "instead, or pass callbacks with wait=True"
            )
        self._require_dataplane_url()
        execute = _execute_message(
            command,
            timeout=timeout,
            shell=shell,
            idle_timeout=idle_timeout,
            kill_on_disconnect=kill_on_disconnect,
            ttl_seconds=ttl_seconds,
            env=env,
            cwd=cwd,
            pty=pty,
            command_id=command_id,
            # With wait=True and no stdin nobody can ever send input: close it at spawn, so a
            # command that reads stdin sees EOF instead of hanging (as over HTTP /execute).
            close_stdin=stdin == "" or (wait and stdin is None),
        )
        endpoint = self._exec_endpoint(headers)
        streaming = not wait or on_stdout is not None or on_stderr is not None
        try:
            ws = await endpoint.open()
        except _WS_FALLBACK_ERRORS as exc:
            if streaming or stdin is not None:
                # Streaming and stdin exist only over the WebSocket (spec §4.6).
                raise
            logger.debug("run(%r): WebSocket unavailable (%s); using HTTP /execute", command, exc)
            return await self._run_http(
                command,
                timeout=execute.timeout_seconds,
                env=env,
                cwd=cwd,
                shell=shell,
                headers=headers,
            )
        handle = await AsyncCommandHandle._start(
            endpoint,
            ws,
            execute,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            keep_output=keep_output,
        )
        try:
            if stdin:
                await handle.send_input(stdin)
                await handle.close_stdin()
            if not wait:
                return handle
            return await handle.result
        except BaseException:
            # Detach (the command goes on per idle_timeout): a callback raised, the task was
            # cancelled, or the stream failed.
            await handle.aclose()
            raise

    async def reconnect(
        self,
        command_id: str,
        *,
        stdout_offset: int = 0,
        stderr_offset: int = 0,
        headers: RequestHeaders = None,
        keep_output: bool = True,
    ) -> AsyncCommandHandle:
        """A handle on a command started earlier, possibly by another process.

        Its output is replayed from the given byte offsets (0 and 0: everything the server still
        has), then streamed live. ``keep_output=False`` (hutch extension): as in :meth:`run`.

        Raises:
            ValueError: An invalid command id or a negative offset.
            ImportError: The ``websockets`` package is not installed.
            SandboxConnectionError: The sandbox could not be reached.

        Iterating the handle raises :class:`SandboxOperationError` with ``error_type``
        ``"CommandNotFound"`` or ``"SessionExpired"`` when the server has no such command.
        """
        self._require_dataplane_url()
        request = Reconnect(command_id, stdout_offset, stderr_offset)
        return await AsyncCommandHandle._reconnect(
            self._exec_endpoint(headers), request, keep_output=keep_output
        )

    def _exec_endpoint(self, headers: RequestHeaders) -> ExecEndpoint:
        """Where this sandbox's exec WebSockets go, with the client's headers (spec §4.1)."""
        upgrade_headers = dict(self._client._default_headers)
        if headers:
            upgrade_headers.update(headers)
        return ExecEndpoint(self._require_dataplane_url(), upgrade_headers, self._client._sleep)

    async def _run_http(
        self,
        command: str,
        *,
        timeout: int,
        env: dict[str, str] | None,
        cwd: str | None,
        shell: str,
        headers: RequestHeaders,
    ) -> ExecutionResult:
        """Run over blocking HTTP ``POST /execute`` (spec §3.2, §5)."""
        payload: dict[str, Any] = {"command": command, "timeout": timeout, "shell": shell}
        if env is not None:
            payload["env"] = env
        if cwd is not None:
            payload["cwd"] = cwd
        # The server answers when the command ends: allow its timeout plus 10 s (spec §1.4).
        # langsmith gives up after 10 s when timeout=0 (no limit); we wait as long as it runs.
        http_timeout = timeout + 10 if timeout > 0 else None
        response = await self._dataplane(
            "POST",
            "/execute",
            dataplane_error,
            headers=headers,
            timeout=http_timeout,
            json=payload,
        )
        return ExecutionResult.from_dict(self._client._json_object(response))

    async def tunnel(
        self,
        remote_port: int,
        *,
        local_port: int = 0,
        max_reconnects: int = 3,
        headers: RequestHeaders = None,
    ) -> AsyncTunnel:
        """Forward a local TCP port to ``remote_port`` inside the sandbox (spec §6).

        Connections to ``127.0.0.1:<local_port>`` reach ``127.0.0.1:<remote_port>`` as the
        sandbox sees it, so a service bound only to the sandbox's loopback is reachable::

            async with await sb.tunnel(5432) as t:
                dsn = f"postgresql://postgres@127.0.0.1:{t.local_port}/postgres"

        The WebSocket opens here, before the local port is bound. ``local_port=0`` picks a free
        port (unlike langsmith, where 0 means "same as ``remote_port``"). A connection the
        sandbox refuses (nothing listening there) is logged and closed; the tunnel goes on. A
        lost session is reopened on the next connection, up to ``max_reconnects`` attempts.

        Raises:
            ValueError: A port is out of range, or ``max_reconnects`` is negative.
            ImportError: The ``websockets`` package is not installed.
            SandboxConnectionError: The server refused the tunnel or could not be reached.
            OSError: ``local_port`` is already in use.
        """
        upgrade_headers = dict(self._client._default_headers)
        if headers:
            upgrade_headers.update(headers)
        return await AsyncTunnel.open(
            self._require_dataplane_url(),
            upgrade_headers,
            remote_port,
            local_port=local_port,
            max_reconnects=max_reconnects,
        )
