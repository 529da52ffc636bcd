"""Endpoints the SDKs can call that hutch does not implement yet.

They answer 501 in the error envelope with a message naming the missing feature, never a 404 (which
an SDK would read as "that volume/pool does not exist") and never a 500.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from hutch.protocol._errors import ErrorType
from hutch.server._auth import Principal
from hutch.server._deps import principal
from hutch.server._errors import ApiError

router = APIRouter()

_FEATURES: list[tuple[str, str, list[str]]] = [
    ("/volumes", "Volumes", ["GET", "POST"]),
    ("/volumes/{name}", "Volumes", ["GET", "PATCH", "DELETE"]),
    ("/pools", "Pools", ["GET", "POST"]),
    ("/pools/{name}", "Pools", ["GET", "PATCH", "DELETE"]),
]


def _refuse(feature: str):  # type: ignore[no-untyped-def]
    async def endpoint(who: Principal = Depends(principal)) -> None:
        raise ApiError(
            ErrorType.NOT_IMPLEMENTED,
            f"{feature} are not supported by this hutch server yet",
        )

    return endpoint


for _path, _feature, _methods in _FEATURES:
    router.add_api_route(
        _path, _refuse(_feature), methods=_methods, include_in_schema=False, response_model=None
    )
