"""`GET /openapi.json`: the API reference, for any valid key (RELIABILITY D1: only health is public).

There is no /docs page: Swagger UI fetches the spec from the browser without a key, and its scripts
from a CDN; point a client generator or schemathesis at this route with a key instead.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from serve.deps import Caller

router = APIRouter(include_in_schema=False)


@router.get("/openapi.json")
async def openapi_spec(request: Request, _: Caller) -> dict[str, Any]:
    spec: dict[str, Any] = request.app.openapi()
    return spec
