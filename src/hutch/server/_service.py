"""Service URLs (spec §2.3): signed, expiring access to a port inside a sandbox, over HTTP and
WebSocket, for programs (a token header) and for browsers (a cookie).
"""

from __future__ import annotations

from fastapi import APIRouter

#: Data-plane routes (under /dp/{sandbox_id}).
router = APIRouter()
#: Control-plane routes (mounted under every control prefix).
control_router = APIRouter()
