"""A sandbox's statuses and the transitions between them.

The stored strings are the wire's (``GET /boxes/{name}`` answers them as they are), so the enum is
a :class:`~enum.StrEnum` whose members compare equal to those strings. Every status write goes
through :meth:`hutch.domain.SandboxRepository.transition`, which refuses an edge this table lacks.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class SandboxStatus(StrEnum):
    PROVISIONING = "provisioning"
    READY = "ready"
    STOPPED = "stopped"
    FAILED = "failed"
    #: Recorded before a delete acts, so a delete a crash interrupted is finished at restart.
    DELETING = "deleting"


S = SandboxStatus

#: Allowed status changes, from → to. No status goes to itself: a compare-and-set from a status
#: to the same one would let two writers both "win" (both stop a sandbox that was ready).
#: ``deleting`` leads nowhere: the record is removed once the delete is done.
TRANSITIONS: dict[SandboxStatus, frozenset[SandboxStatus]] = {
    S.PROVISIONING: frozenset({S.READY, S.FAILED, S.DELETING}),
    S.READY: frozenset({S.STOPPED, S.FAILED, S.DELETING}),
    S.STOPPED: frozenset({S.READY, S.FAILED, S.DELETING}),
    S.FAILED: frozenset({S.DELETING}),
    S.DELETING: frozenset(),
}


class IllegalTransition(ValueError):
    """A status write the table does not allow: a bug in the caller, never a client's fault."""


def check_transition(expected: Iterable[SandboxStatus], to: SandboxStatus) -> None:
    """Raise :class:`IllegalTransition` unless every ``expected`` status may go to ``to``."""
    froms = set(expected)
    if not froms:
        raise IllegalTransition(f"a transition to {to} needs at least one expected status")
    bad = sorted(f for f in froms if to not in TRANSITIONS[SandboxStatus(f)])
    if bad:
        raise IllegalTransition(f"a sandbox may not go from {' or '.join(bad)} to {to}")
