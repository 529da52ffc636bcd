"""Command sessions over Server-Sent Events (0.13+ with
LANGSMITH_EXPERIMENTAL_FEATURES=sandbox_sse_exec): /execute/stream/start and
/execute/stream/resume.
"""

from __future__ import annotations

from fastapi import APIRouter

#: Data-plane routes (under /dp/{sandbox_id}).
router = APIRouter()
#: Control-plane routes (mounted under every control prefix).
control_router = APIRouter()
