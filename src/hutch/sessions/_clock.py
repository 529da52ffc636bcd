"""Injected time for the session timers (command timeout, idle timeout, TTL after exit).

Logic that depends on time goes through a :class:`Clock` so tests drive it with
:class:`FakeClock` instead of sleeping (house style rule 12). Callbacks are plain synchronous
functions: a timer only *requests* something (sets a flag or an event); the owning task does the
asynchronous work, so no task is ever started from a timer.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None:
        """Stop the timer; cancelling a timer that already fired or was cancelled is a no-op."""


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds (only differences are meaningful)."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once, ``delay`` seconds from now (at once if ``delay`` ≤ 0)."""


class AsyncioClock:
    """The real clock: the running event loop's monotonic time and ``loop.call_later``."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A manual clock for tests: time moves only in :meth:`advance`, which runs due callbacks."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._order = itertools.count()
        self._heap: list[tuple[float, int, _FakeTimer]] = []

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _FakeTimer(self._now + max(0.0, delay), callback)
        heapq.heappush(self._heap, (timer.deadline, next(self._order), timer))
        return timer

    @property
    def pending(self) -> int:
        """How many timers are scheduled and not cancelled."""
        return sum(1 for _, _, t in self._heap if not t.cancelled)

    def advance(self, seconds: float) -> int:
        """Move time forward, running every callback that falls due in deadline order.

        Returns how many callbacks ran. Callbacks scheduled by callbacks run too if they fall
        due within the same advance.
        """
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        target = self._now + seconds
        fired = 0
        while self._heap and self._heap[0][0] <= target:
            deadline, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self._now = max(self._now, deadline)
            timer.cancelled = True  # a fired timer is spent; cancel() afterwards is a no-op
            timer.callback()
            fired += 1
        self._now = target
        return fired
