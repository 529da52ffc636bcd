"""The lifetime rules (pure): which deadline applies, what the reaper does then, and the API's
``expires_at``."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from hutch.server._lifetimes import Action, Deadline, Lifetime, expires_at, next_deadline

T0 = datetime(2025, 1, 1, 12, 0, 0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_nothing_set_means_no_deadline() -> None:
    """Without TTLs a sandbox lives until deleted."""
    life = Lifetime(created_at=T0, last_active_at=at(50))
    assert next_deadline(life) is None
    assert expires_at(life) is None


def test_ttl_counts_from_creation_whatever_the_activity() -> None:
    """ttl_seconds is a hard lifetime: activity does not extend it."""
    life = Lifetime(created_at=T0, last_active_at=at(590), ttl_seconds=600)
    assert next_deadline(life) == Deadline(at(600), Action.DELETE, "ttl_seconds")
    assert expires_at(life) == at(600)


def test_idle_ttl_counts_from_last_activity() -> None:
    """idle_ttl_seconds deletes a template-era sandbox that long after its last activity."""
    life = Lifetime(created_at=T0, last_active_at=at(100), idle_ttl_seconds=60)
    assert next_deadline(life) == Deadline(at(160), Action.DELETE, "idle_ttl_seconds")
    assert expires_at(life) == at(160)


def test_earliest_of_ttl_and_idle_wins() -> None:
    """With both, the earlier deadline applies (and is expires_at)."""
    life = Lifetime(created_at=T0, last_active_at=at(100), ttl_seconds=120, idle_ttl_seconds=60)
    assert next_deadline(life) == Deadline(at(120), Action.DELETE, "ttl_seconds")
    life = Lifetime(created_at=T0, last_active_at=at(10), ttl_seconds=120, idle_ttl_seconds=60)
    assert next_deadline(life) == Deadline(at(70), Action.DELETE, "idle_ttl_seconds")
    assert expires_at(life) == at(70)


def test_provisioning_is_never_idle() -> None:
    """A sandbox still being created has no idle deadline (its hard TTL still counts)."""
    life = Lifetime(
        created_at=T0, last_active_at=T0, idle_ttl_seconds=60, ttl_seconds=600, provisioning=True
    )
    assert next_deadline(life) == Deadline(at(600), Action.DELETE, "ttl_seconds")


def test_without_template_idleness_stops() -> None:
    """Created without a template (newest SDK), idleness stops a running sandbox; a stopped one
    then waits for delete_after_stop_seconds; expires_at is only ever a deletion."""
    running = Lifetime(
        created_at=T0,
        last_active_at=at(30),
        idle_ttl_seconds=60,
        delete_after_stop_seconds=120,
        idle_stops=True,
    )
    assert next_deadline(running) == Deadline(at(90), Action.STOP, "idle_ttl_seconds")
    assert expires_at(running) is None
    stopped = Lifetime(
        created_at=T0,
        last_active_at=at(90),
        idle_ttl_seconds=60,
        delete_after_stop_seconds=120,
        idle_stops=True,
        ready=False,
        stopped_at=at(90),
    )
    assert next_deadline(stopped) == Deadline(at(210), Action.DELETE, "delete_after_stop_seconds")
    assert expires_at(stopped) == at(210)


def test_template_era_stopped_sandbox_still_expires_when_idle() -> None:
    """A stopped template-era sandbox is idle: its idle TTL deletes it."""
    life = Lifetime(
        created_at=T0, last_active_at=at(10), idle_ttl_seconds=60, ready=False, stopped_at=at(10)
    )
    assert next_deadline(life) == Deadline(at(70), Action.DELETE, "idle_ttl_seconds")


def test_deletion_wins_a_tie_with_a_stop() -> None:
    """When a stop and a deletion fall due together, the sandbox is deleted."""
    life = Lifetime(
        created_at=T0, last_active_at=T0, ttl_seconds=60, idle_ttl_seconds=60, idle_stops=True
    )
    due = next_deadline(life)
    assert due is not None and due.action is Action.DELETE


@pytest.mark.parametrize("field", ["ttl_seconds", "idle_ttl_seconds", "delete_after_stop_seconds"])
def test_zero_or_none_disables(field: str) -> None:
    """0 and None both mean no limit."""
    for value in (0, None):
        life = Lifetime(
            created_at=T0, last_active_at=T0, stopped_at=T0, ready=False, **{field: value}
        )
        assert next_deadline(life) is None
