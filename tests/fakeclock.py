"""A fake :class:`hutch.domain.Clock` for the manager's lifetimes and reaper: time moves only in
:meth:`advance`, which fires the timers that fall due (the sessions' fake clock does the timers;
this adds the wall time, naive UTC, moving with it)."""

from __future__ import annotations

from datetime import datetime, timedelta

from hutch.sessions._clock import FakeClock


class FakeWallClock(FakeClock):
    def __init__(self, start: datetime) -> None:
        super().__init__()
        self._start = start

    def utcnow(self) -> datetime:
        return self._start + timedelta(seconds=self.now())

    def monotonic(self) -> float:
        return self.now()
