"""The domain layer: what a sandbox's record may become, and the rules the server keeps.

No HTTP here and no runtime: handlers parse, call this, and serialise; domain errors become the
wire's envelope in one table (:mod:`hutch.server._errors`).
"""

from hutch.domain._clock import Clock, SystemClock, TimerHandle
from hutch.domain._errors import DomainError, QuotaExceeded, SandboxGone, WrongState
from hutch.domain._quota import Limits, Quotas
from hutch.domain._repository import SandboxRepository
from hutch.domain._status import (
    TRANSITIONS,
    IllegalTransition,
    SandboxStatus,
    check_transition,
)

__all__ = [
    "TRANSITIONS",
    "Clock",
    "DomainError",
    "IllegalTransition",
    "Limits",
    "QuotaExceeded",
    "Quotas",
    "SandboxGone",
    "SandboxRepository",
    "SandboxStatus",
    "SystemClock",
    "TimerHandle",
    "WrongState",
    "check_transition",
]
