"""Value types of command sessions: state, options and the events a subscriber receives."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Literal, TypeAlias

Stream: TypeAlias = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, Stream] = ("stdout", "stderr")


class SessionState(enum.Enum):
    """``RUNNING → EXITED → EXPIRED``; no other transition exists.

    * ``RUNNING``: the process has not exited yet.
    * ``EXITED``: the exit code is known (output already read out of the pipes may still be
      draining into the log); the session is kept ``ttl`` seconds for reconnects.
    * ``EXPIRED``: forgotten; lookups answer ``SessionExpired``.
    """

    RUNNING = "running"
    EXITED = "exited"
    EXPIRED = "expired"


@dataclass(frozen=True)
class SessionOptions:
    """Per-command policy. ``None`` means "no limit" (the wire's ``0``/``-1`` are translated by
    the server, not here). All durations are in seconds.

    * ``timeout``: kill the tree this long after spawn; subscribers then get
      ``Error("CommandTimeout", ...)``.
    * ``idle_timeout``: kill the running command after this long with no subscriber attached.
    * ``ttl``: keep the session this long after the command exits (longer while a subscriber
      is still attached).
    * ``kill_on_disconnect``: kill as soon as the last subscriber detaches.
    * ``pty``: informational (the process has no separate stderr then).
    """

    timeout: float | None
    idle_timeout: float | None = 300
    ttl: float | None = 600
    kill_on_disconnect: bool = False
    pty: bool = False

    def __post_init__(self) -> None:
        for name in ("timeout", "idle_timeout", "ttl"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(f"{name} must be a non-negative number of seconds or None")


@dataclass(frozen=True, slots=True)
class Output:
    """Text of stream bytes ``[offset, offset + len(data.encode("utf-8")))``, exactly.

    Invalid UTF-8 bytes appear as one ``"?"`` each (see :mod:`hutch.sessions._utf8`).
    """

    stream: Stream
    data: str
    offset: int


@dataclass(frozen=True, slots=True)
class RawOutput:
    """Stream bytes ``[offset, offset + len(data))`` exactly as the command wrote them.

    For byte-oriented transports (SSE sends base64 of the raw bytes); cut at the same character
    boundaries as :class:`Output`, so the two views of a log always agree on offsets.
    """

    stream: Stream
    data: bytes
    offset: int


@dataclass(frozen=True, slots=True)
class Exit:
    """Terminal: the command exited with ``exit_code`` (128+N when killed by signal N)."""

    exit_code: int


@dataclass(frozen=True, slots=True)
class Error:
    """Terminal: the command ended in an error (``CommandTimeout``, ``CommandError``)."""

    error_type: str
    message: str


Terminal: TypeAlias = Exit | Error
Event: TypeAlias = Output | Exit | Error
