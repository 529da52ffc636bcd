"""Errors of command sessions; each carries its context as attributes."""

from __future__ import annotations

from collections.abc import Iterable

from hutch.sessions._types import SessionState


class SessionError(Exception):
    """Root of command-session errors; ``str()`` is meant for users."""

    #: The wire ``error_type`` the server reports this as (spec §4.5).
    error_type = "CommandError"


class CommandNotFound(SessionError):
    """No command with this id was ever started by this owner (or it was forgotten)."""

    error_type = "CommandNotFound"

    def __init__(self, command_id: str) -> None:
        super().__init__(f"Command not found: {command_id}")
        self.command_id = command_id


class InvalidSessionState(SessionError):
    """An operation is not allowed in the session's current state."""

    def __init__(
        self,
        action: str,
        current: SessionState,
        expected: Iterable[SessionState],
        message: str | None = None,
    ) -> None:
        self.action = action
        self.current = current
        self.expected = tuple(expected)
        wanted = " or ".join(s.value for s in self.expected)
        super().__init__(
            message or f"Cannot {action}: the command is {current.value}, expected {wanted}"
        )


class SessionExpired(InvalidSessionState):
    """The command existed but its session was dropped after its TTL (spec §4.7)."""

    error_type = "SessionExpired"

    def __init__(self, command_id: str) -> None:
        super().__init__(
            "attach",
            SessionState.EXPIRED,
            (SessionState.RUNNING, SessionState.EXITED),
            f"Session expired: {command_id}",
        )
        self.command_id = command_id


class StdinClosed(SessionError):
    """Input was written after stdin was closed (by the client, or by the command)."""


class SlowConsumer(SessionError):
    """A subscriber fell behind: output it had not sent yet was dropped after another client
    received it. Re-attach from ``stdout_offset``/``stderr_offset`` to continue from the oldest
    retained bytes.
    """

    def __init__(self, command_id: str, stdout_offset: int, stderr_offset: int) -> None:
        super().__init__(
            f"Command {command_id}: this client fell behind and output it had not received was "
            f"dropped; re-attach from stdout_offset={stdout_offset}, "
            f"stderr_offset={stderr_offset} to resume from the oldest retained output"
        )
        self.command_id = command_id
        self.stdout_offset = stdout_offset
        self.stderr_offset = stderr_offset


class TooManySessions(SessionError):
    """The owner already has ``limit`` running commands."""

    error_type = "QuotaExceeded"

    def __init__(self, owner: str, limit: int) -> None:
        super().__init__(
            f"Sandbox {owner} already runs {limit} commands, the limit; wait for one to finish "
            "or kill one before starting another"
        )
        self.owner = owner
        self.limit = limit


class ShuttingDown(SessionError):
    """The session manager is closed (the server is stopping)."""

    error_type = "ServerShuttingDown"

    def __init__(self) -> None:
        super().__init__("The server is shutting down; retry once it is back")
