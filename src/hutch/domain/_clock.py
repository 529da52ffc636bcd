"""Injected time for lifetimes and the reaper.

The manager reads the time (deadlines, activity, stop times) and sleeps until the next deadline
only through a :class:`Clock`, so tests drive the reaper with a fake one instead of sleeping
(``tests/fakeclock.py``). Timer callbacks only request something (set an event); the owning task
does the work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from hutch.store import utcnow


class TimerHandle(Protocol):
    def cancel(self) -> None:
        """Stop the timer; cancelling one that fired or was cancelled is a no-op."""


class Clock(Protocol):
    def utcnow(self) -> datetime:
        """Wall time, naive UTC (as the store keeps times)."""

    def monotonic(self) -> float:
        """Seconds for intervals (only differences are meaningful)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once, ``delay`` seconds from now (at once if ``delay`` ≤ 0)."""


class SystemClock:
    """The real clock: the system's wall time, and the running event loop's timers."""

    def utcnow(self) -> datetime:
        return utcnow()

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)
