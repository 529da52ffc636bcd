"""File helpers of the 0.13+ SDKs: HEAD and ranged GET of /download, POST /glob and /grep, and
signed download URLs (POST /boxes/{name}/download-url).
"""

from __future__ import annotations

from fastapi import APIRouter

#: Data-plane routes (under /dp/{sandbox_id}).
router = APIRouter()
#: Control-plane routes (mounted under every control prefix).
control_router = APIRouter()
