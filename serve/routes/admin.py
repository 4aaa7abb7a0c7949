"""Admin: `POST /admin/reload` (re-read the ledger now) and `GET /metrics` (Prometheus). Admin scope only."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serve.deps import Admin, GatewayDep
from serve.errors import redact, responses
from serve.logs import log
from serve.releases import ReloadReport

router = APIRouter(tags=["admin"])


@router.post(
    "/admin/reload",
    operation_id="reload_releases",
    response_model=ReloadReport,
    responses=responses(401, 403),
)
async def reload_releases(gw: GatewayDep, _: Admin) -> ReloadReport:
    """Bind every schema's live release now; a refused release keeps the old one live and says why."""
    report = await gw.table.refresh(gw.engine)
    log("releases", **report.model_dump())
    # Refusal reasons name run files; the answer keeps their last part, never the server's paths (D4).
    refused = [r.model_copy(update={"reason": redact(r.reason)}) for r in report.refused]
    return report.model_copy(update={"refused": refused})


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    responses={
        **responses(401, 403),
        200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition."},
    },
)
async def metrics(gw: GatewayDep, _: Admin) -> Response:
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)
