"""Starting a command session: one path for every transport (``/execute/ws``, SSE, the web UI).

A command runs as ``<shell> -c <command>`` with the sandbox's run configuration (spec §9.1
``run_config``: the snapshot's layer, then the sandbox's, then the command's own; see
:class:`hutch.protocol._exec.RunConfig`) and the caller's ``env``/``cwd`` on top.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hutch.protocol._errors import ErrorType
from hutch.protocol._exec import ExecProtocolError, RunConfig
from hutch.runtime._interface import ExecSpec, Process, SandboxNotFound, SpawnError
from hutch.server._dataplane import resolve_command
from hutch.server._deps import Services
from hutch.server._errors import ApiError
from hutch.sessions import CommandSession, SessionError, SessionExpired, SessionOptions
from hutch.store import Sandbox

__all__ = ["CommandRequest", "limit", "sandbox_run_config", "start_command"]


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
    if not row.run_config:
        return None
    try:
        return RunConfig.from_json(json.loads(row.run_config))
    except (ValueError, ExecProtocolError):  # validated on the way in; never fail a command
        return None


def exec_spec(svc: Services, row: Sandbox, req: CommandRequest) -> ExecSpec:
    """The runtime's view of a command (shell and cwd checked inside the sandbox).

    Raises:
        ApiError: ``CommandError`` naming what is missing (shell, working directory).
    """
    layered = sandbox_run_config(row)
    if req.run_config is not None:
        layered = req.run_config.over(layered)
    env = dict((layered.env_vars if layered else None) or {})
    env.update(req.env or {})
    cwd = req.cwd or (layered.work_dir if layered else None)
    shell, where = resolve_command(svc, row, req.shell, cwd)
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
    spec = exec_spec(svc, row, req)
    options = SessionOptions(
        timeout=limit(req.timeout) if req.timeout else None,
        idle_timeout=limit(req.idle_timeout),
        ttl=limit(req.ttl),
        kill_on_disconnect=req.kill_on_disconnect,
        pty=req.pty,
    )

    async def spawn() -> Process:
        return await svc.runtime.exec(row.id, spec)

    try:
        session, created = await svc.sessions.start(
            row.id, spawn, options, command_id=req.command_id
        )
    except SessionExpired:
        raise ApiError(ErrorType.SESSION_EXPIRED, f"Session expired: {req.command_id}") from None
    except (SpawnError, SandboxNotFound, SessionError, ValueError) as exc:
        raise ApiError(ErrorType.COMMAND_ERROR, f"Command could not start: {exc}") from exc
    await svc.manager.touch(row.id)
    return session, created
