"""Liveness and readiness. Both are cheap, need no key and reveal no version or configuration."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from serve.deps import GatewayDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: str


class Readiness(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ready: bool
    reason: str | None = None
    schemas: int


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The gateway process is up (it may still be waiting for its engine)."""
    return Health(status="ok")


@router.get(
    "/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "Not ready."}}
)
async def readyz(gw: GatewayDep) -> JSONResponse:
    """Ready when the engine answers and makes progress, the live adapters are loaded, and the gateway
    is not draining. Reads gateway state only: it never calls the engine, so probes stay cheap."""
    table = gw.table
    unloaded = [b.release_id for b in table.bindings.values() if b.release_id not in table.loaded]
    reason = None
    if gw.admission.draining:
        reason = "draining"
    elif gw.stalled_since is not None:  # alive and healthy, but finishing nothing (RELIABILITY F4)
        reason = "engine stalled"
    elif not gw.admission.engine_ready:
        reason = "engine not ready"
    elif unloaded:
        reason = f"{len(unloaded)} live adapters not loaded yet"
    body = Readiness(ready=reason is None, reason=reason, schemas=len(table.bindings))
    return JSONResponse(body.model_dump(), status_code=200 if reason is None else 503)
