"""Starting a command session: one path for every transport (``/execute/ws``, SSE, the web UI).

A command with pipes (not a PTY) is started to survive a server restart (``ExecSpec.keep``,
see "Commands across a server restart" in ``docs/architecture.md``): a later server takes it
over with :func:`recover_commands`, under the same command id, before it looks one up.

A command runs as ``<shell> -c <command>`` with the sandbox's run configuration (spec §9.1
``run_config``: the snapshot's layer, then the sandbox's, then the command's own; see
:class:`hutch.protocol._exec.RunConfig`) and the caller's ``env``/``cwd`` on top.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass

from hutch.protocol._errors import ErrorType
from hutch.protocol._exec import ExecTooLarge, RunConfig, check_exec_size
from hutch.runtime._interface import (
    ExecSpec,
    InvalidPath,
    Process,
    SandboxNotFound,
    SpawnError,
    normalize_path,
)
from hutch.server._deps import Services
from hutch.server._errors import ApiError
from hutch.server._file_errors import not_running
from hutch.server._snapshot_store import effective_run_config
from hutch.sessions import (
    CommandSession,
    SessionError,
    SessionExpired,
    SessionOptions,
    keep_text,
    take_over_commands,
)
from hutch.store import Sandbox

__all__ = [
    "CommandRequest",
    "exec_spec",
    "limit",
    "recover_commands",
    "resolve_command",
    "sandbox_run_config",
    "start_command",
]
HOME = "/home/user"


def limit(value: int) -> float | None:
    """Wire convention → Python: -1 (and, for timeouts, 0) mean no limit."""
    return None if value < 0 else float(value)


@dataclass(frozen=True)
class CommandRequest:
    command: str
    shell: str = "/bin/bash"
    env: dict[str, str] | None = None
    cwd: str | None = None
    run_config: RunConfig | None = None
    pty: bool = False
    rows: int = 24
    cols: int = 80
    #: Wire conventions: ``timeout`` 0 = none; ``idle_timeout`` and ``ttl`` -1 = never.
    timeout: int = 60
    idle_timeout: int = 300
    ttl: int = 600
    kill_on_disconnect: bool = False
    command_id: str | None = None


def sandbox_run_config(row: Sandbox) -> RunConfig | None:
    """The run configuration a sandbox's commands start from (its snapshot's and its own)."""
    return effective_run_config(row.run_config)


async def resolve_command(
    svc: Services, row: Sandbox, shell: str, cwd: str | None
) -> tuple[str, str]:
    """Check a command's shell and working directory inside the sandbox.

    Returns the shell to use (``/bin/bash`` falls back to ``/bin/sh`` when the image has no bash,
    spec §10.7) and the absolute cwd (default: the sandbox home).
    """
    try:
        if not await svc.runtime.exists(row.id, shell):
            if shell != "/bin/bash" or not await svc.runtime.exists(row.id, "/bin/sh"):
                raise ApiError(
                    ErrorType.COMMAND_ERROR,
                    f"Shell '{shell}' not found in sandbox '{row.name}'; "
                    "pass shell='/bin/sh' or use an image that has it",
                )
            shell = "/bin/sh"
        try:
            where = normalize_path(cwd or HOME, HOME)
        except InvalidPath as exc:
            raise ApiError(ErrorType.COMMAND_ERROR, str(exc)) from exc
        if not await svc.runtime.exists(row.id, where):
            raise ApiError(
                ErrorType.COMMAND_ERROR,
                f"Working directory '{where}' does not exist in sandbox '{row.name}'",
            )
    except SandboxNotFound as exc:
        raise not_running(row) from exc
    return shell, where


async def exec_spec(svc: Services, row: Sandbox, req: CommandRequest) -> ExecSpec:
    """The runtime's view of a command (shell and cwd checked inside the sandbox); the one point
    every transport passes, so the sizes the kernel refuses are refused here.

    Raises:
        ApiError: ``PayloadTooLarge`` (413) for a command, environment or path over the kernel's
            limits (:func:`hutch.protocol._exec.check_exec_size`); ``CommandError`` naming what is
            missing (shell, working directory).
    """
    layered = sandbox_run_config(row)
    if req.run_config is not None:
        layered = req.run_config.over(layered)
    env = dict((layered.env_vars if layered else None) or {})
    env.update(req.env or {})
    cwd = req.cwd or (layered.work_dir if layered else None)
    try:
        check_exec_size(req.command, env, shell=req.shell, cwd=cwd or "")
    except ExecTooLarge as exc:
        raise ApiError(ErrorType.PAYLOAD_TOO_LARGE, f"Command refused: {exc}") from None
    shell, where = await resolve_command(svc, row, req.shell, cwd)
    return ExecSpec(
        argv=[shell, "-c", req.command],
        env=env,
        cwd=where,
        pty=req.pty,
        rows=req.rows,
        cols=req.cols,
        user=layered.user if layered else None,
    )


async def start_command(
    svc: Services, row: Sandbox, req: CommandRequest
) -> tuple[CommandSession, bool]:
    """Get or create the command session ``req.command_id`` (spec §9.1) of a ready sandbox;
    returns ``(session, created)``.

    Raises:
        ApiError: ``CommandError`` (bad shell, cwd or user; spawn failed), ``SessionExpired``.
    """
    await recover_commands(svc, row)
    spec = await exec_spec(svc, row, req)
    options = SessionOptions(
        timeout=limit(req.timeout) if req.timeout else None,
        idle_timeout=limit(req.idle_timeout),
        ttl=limit(req.ttl),
        kill_on_disconnect=req.kill_on_disconnect,
        pty=req.pty,
    )

    command_id = req.command_id or uuid.uuid4().hex
    if not req.pty:
        spec = dataclasses.replace(spec, keep=keep_text(command_id, options))

    async def spawn() -> Process:
        return await svc.runtime.exec(row.id, spec)

    try:
        session, created = await svc.sessions.start(row.id, spawn, options, command_id=command_id)
    except SessionExpired:
        raise ApiError(ErrorType.SESSION_EXPIRED, f"Session expired: {req.command_id}") from None
    except (SpawnError, SandboxNotFound, SessionError, ValueError) as exc:
        raise ApiError(ErrorType.COMMAND_ERROR, f"Command could not start: {exc}") from exc
    await svc.manager.touch(row.id)
    return session, created


async def recover_commands(svc: Services, row: Sandbox) -> None:
    """Take over the commands an earlier server left in ``row`` (once per sandbox and server)."""
    await take_over_commands(svc.sessions, svc.runtime, row.id)
