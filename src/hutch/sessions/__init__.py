"""Command sessions: spawned processes whose output can be replayed from byte offsets.

Pure asyncio, no HTTP: the server's ``/execute/ws`` handler (spec §4, §9.1) maps wire messages
onto :class:`SessionManager` and :class:`CommandSession`. See :mod:`hutch.sessions._log` for
the no-loss and bounded-memory rules and :mod:`hutch.sessions._utf8` for byte-exact text.
"""

from hutch.sessions._clock import AsyncioClock, Clock, FakeClock, TimerHandle
from hutch.sessions._errors import (
    CommandNotFound,
    InvalidSessionState,
    SessionError,
    SessionExpired,
    ShuttingDown,
    SlowConsumer,
    StdinClosed,
    TooManySessions,
)
from hutch.sessions._kept import keep_text, take_over_commands
from hutch.sessions._log import DEFAULT_CAPACITY, MAX_EVENT_BYTES
from hutch.sessions._manager import Recovered, SessionManager
from hutch.sessions._session import CommandSession, Subscription, SupportsDetach, SupportsResize
from hutch.sessions._types import (
    Error,
    Event,
    Exit,
    Output,
    RawOutput,
    SessionOptions,
    SessionState,
    Stream,
    Terminal,
)

__all__ = [
    "DEFAULT_CAPACITY",
    "MAX_EVENT_BYTES",
    "AsyncioClock",
    "Clock",
    "CommandNotFound",
    "CommandSession",
    "Error",
    "Event",
    "Exit",
    "FakeClock",
    "InvalidSessionState",
    "Output",
    "RawOutput",
    "Recovered",
    "SessionError",
    "SessionExpired",
    "SessionManager",
    "SessionOptions",
    "SessionState",
    "ShuttingDown",
    "SlowConsumer",
    "StdinClosed",
    "Stream",
    "Subscription",
    "SupportsDetach",
    "SupportsResize",
    "Terminal",
    "TimerHandle",
    "TooManySessions",
    "keep_text",
    "take_over_commands",
]
