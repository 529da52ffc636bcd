"""Errors of the domain: facts about a sandbox or a workspace, with no HTTP in them.

:mod:`hutch.server._errors` maps each class to the wire (its error type, and the machine fields
of :meth:`DomainError.fields` next to the message) in one table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal


class DomainError(Exception):
    """Base of the domain's errors; ``str()`` is the message a user reads."""

    def fields(self) -> dict[str, str]:
        """Machine-readable facts sent next to the message (``detail.<key>``)."""
        return {}


class WrongState(DomainError):
    """A lifecycle operation was asked of a sandbox in a state that does not allow it (or
    another writer changed its state first: the compare-and-set lost)."""

    def __init__(self, name: str, current: str, expected: str | Iterable[str]) -> None:
        wanted = expected if isinstance(expected, str) else " or ".join(sorted(expected))
        super().__init__(f"Sandbox '{name}' is {current}; this needs it {wanted}")
        self.name, self.current, self.expected = name, current, wanted


class SandboxGone(DomainError):
    """The sandbox's record is gone (deleted meanwhile)."""

    def __init__(self, sandbox_id: str) -> None:
        super().__init__(f"sandbox {sandbox_id} was deleted")
        self.sandbox_id = sandbox_id


QuotaType = Literal["sandboxes", "cpu", "memory"]


class QuotaExceeded(DomainError):
    """A workspace's quota would be exceeded; ``quota_type`` says which one."""

    def __init__(self, quota_type: QuotaType, message: str) -> None:
        super().__init__(message)
        self.quota_type = quota_type

    def fields(self) -> dict[str, str]:
        return {"quota_type": self.quota_type}
