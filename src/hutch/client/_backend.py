"""Names that differ between the async SDK and the sync SDK generated from it.

``scripts/gen_sync.py`` rewrites ``async_sleep`` to ``sleep`` and ``AsyncSleep`` to ``SyncSleep``,
so the async client can name them and the generated sync client gets the blocking twins.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeAlias

#: How the async client sleeps between retries and polls (injectable for tests).
AsyncSleep: TypeAlias = Callable[[float], Awaitable[None]]
#: How the sync client sleeps between retries and polls (injectable for tests).
SyncSleep: TypeAlias = Callable[[float], None]
#: A monotonic clock in seconds (injectable for tests).
Clock: TypeAlias = Callable[[], float]


async def async_sleep(seconds: float) -> None:
    """Sleep without blocking the event loop."""
    await asyncio.sleep(seconds)


def sleep(seconds: float) -> None:
    """Sleep, blocking the thread."""
    time.sleep(seconds)
