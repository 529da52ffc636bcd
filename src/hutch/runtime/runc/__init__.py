"""runc-backed runtime: one runc container per sandbox."""

from hutch.runtime.runc._runtime import RuncRuntime

__all__ = ["RuncRuntime"]
