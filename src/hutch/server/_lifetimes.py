"""Sandbox lifetimes: when the reaper acts on a sandbox, and what it does (pure: times in,
deadlines out; the reaper in :mod:`hutch.server._manager` applies them).

* ``ttl_seconds``: a hard lifetime from creation; then the sandbox is deleted (spec §2.2).
* ``idle_ttl_seconds``: that long without activity (a command running or a client attached, an
  open tunnel, file transfers, any command) and the sandbox is deleted (template era, §2.2), or
  stopped if it was created without a template, as the newest SDK expects (§9.1).
* ``delete_after_stop_seconds``: that long after a stop, the sandbox is deleted (§9.1).

``None`` disables each (the wire's ``0`` is translated at the edge). Every deadline derives from
stored fields (``created_at``, ``last_active_at``, ``stopped_at``), so a restarted server keeps
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Action(StrEnum):
    DELETE = "delete"
    STOP = "stop"


@dataclass(frozen=True)
class Deadline:
    at: datetime
    action: Action
    #: The setting that set it: ``ttl_seconds``, ``idle_ttl_seconds`` or
    #: ``delete_after_stop_seconds``.
    reason: str


@dataclass(frozen=True)
class Lifetime:
    """What decides a sandbox's deadlines (naive UTC datetimes, as the store keeps them)."""

    created_at: datetime
    last_active_at: datetime
    ttl_seconds: int | None = None
    idle_ttl_seconds: int | None = None
    delete_after_stop_seconds: int | None = None
    #: Running (status ``ready``): the only state an idle stop applies to.
    ready: bool = True
    #: Still being created: never idle.
    provisioning: bool = False
    #: When it was stopped, if it is stopped.
    stopped_at: datetime | None = None
    #: Idleness stops it instead of deleting it (sandboxes created without a template).
    idle_stops: bool = False


def deadlines(life: Lifetime) -> list[Deadline]:
    """Every deadline that applies now, in no particular order."""
    found = []
    if life.ttl_seconds:
        at = life.created_at + timedelta(seconds=life.ttl_seconds)
        found.append(Deadline(at, Action.DELETE, "ttl_seconds"))
    if life.idle_ttl_seconds and not life.provisioning:
        at = life.last_active_at + timedelta(seconds=life.idle_ttl_seconds)
        if not life.idle_stops:
            found.append(Deadline(at, Action.DELETE, "idle_ttl_seconds"))
        elif life.ready:
            found.append(Deadline(at, Action.STOP, "idle_ttl_seconds"))
    if life.delete_after_stop_seconds and life.stopped_at is not None:
        at = life.stopped_at + timedelta(seconds=life.delete_after_stop_seconds)
        found.append(Deadline(at, Action.DELETE, "delete_after_stop_seconds"))
    return found


def next_deadline(life: Lifetime) -> Deadline | None:
    """The earliest deadline (deletion first on a tie), or None when nothing is set."""
    found = deadlines(life)
    return min(found, key=lambda d: (d.at, d.action != Action.DELETE)) if found else None


def expires_at(life: Lifetime) -> datetime | None:
    """When the sandbox will be deleted if nothing changes (the API's ``expires_at``)."""
    found = [d.at for d in deadlines(life) if d.action == Action.DELETE]
    return min(found) if found else None
