"""FastAPI dependencies as `Annotated` aliases: the gateway, the authenticated caller, an admission slot,
and the live binding of the schema a request names."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from serve.auth import OPEN_ACCESS, ApiKey, find_key
from serve.errors import ApiError, error_response, http_error, request_validation_error
from serve.gateway import Gateway
from serve.generation import Binding

bearer = HTTPBearer(
    auto_error=False, description="Authorization: Bearer <API key> (what the openai SDK sends)."
)
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key, as a header.")


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def authenticate(
    gw: GatewayDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    header_key: Annotated[str | None, Security(api_key_header)],
) -> ApiKey:
    presented = credentials.credentials if credentials else header_key
    key = caller_for(gw, presented)
    if key is None:
        raise unauthorized(gw)
    return key


def caller_for(gw: Gateway, presented: str | None) -> ApiKey | None:
    if gw.settings.open_access:
        return OPEN_ACCESS
    return find_key(gw.keys, presented) if presented else None


def unauthorized(gw: Gateway) -> ApiError:
    gw.metrics.rejections.labels("unauthorized").inc()
    return ApiError(
        401,
        "unauthorized",
        "missing or unknown API key: send Authorization: Bearer <key>",
        headers={"WWW-Authenticate": "Bearer"},
    )


def request_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI reads and validates the body before any dependency runs, so a malformed body would be
    answered before the key is checked: an anonymous caller must learn nothing but 401 (RELIABILITY
    D1). With a key, any unreadable body (not JSON, not UTF-8, wrong fields) is one 422."""
    if isinstance(exc, HTTPException) and exc.status_code != 400:
        return http_error(request, exc)  # unknown route, wrong method: no route, so no key to ask for
    gw = get_gateway(request)
    scheme, _, bearer_key = request.headers.get("authorization", "").partition(" ")
    presented = bearer_key.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key")
    if caller_for(gw, presented) is None:
        return error_response(request, unauthorized(gw))
    if isinstance(exc, RequestValidationError):
        return request_validation_error(request, exc)
    unreadable = ApiError(422, "invalid_request", "the request body is not UTF-8 JSON; send application/json")
    return error_response(request, unreadable)


Caller = Annotated[ApiKey, Depends(authenticate)]


def require_admin(gw: GatewayDep, caller: Caller) -> ApiKey:
    if not caller.admin:
        gw.metrics.rejections.labels("forbidden").inc()
        raise ApiError(403, "forbidden", f"key {caller.name!r} lacks the admin scope")
    return caller


Admin = Annotated[ApiKey, Depends(require_admin)]


async def admission_slot(gw: GatewayDep) -> AsyncIterator[float]:
    """Wait (bounded) for an engine slot; yields the request's deadline (time.monotonic), which the
    queue wait counts against, so a queued request still answers by its deadline."""
    started = time.monotonic()
    deadline = started + gw.settings.request_timeout_s
    admitted = False
    try:
        async with gw.admission.slot(gw.settings.request_timeout_s):
            admitted = True
            gw.metrics.queue_wait.observe(time.monotonic() - started)
            yield deadline
    except ApiError as err:
        if not admitted:  # count refusals at the door, not errors raised by the route itself
            gw.metrics.rejections.labels(err.code).inc()
        raise


Deadline = Annotated[float, Depends(admission_slot)]


def remaining(deadline: float) -> float:
    """Seconds left before `deadline` (from `Deadline`), never negative."""
    return max(0.0, deadline - time.monotonic())


def bind(gw: Gateway, caller: ApiKey, name: str) -> Binding:
    """The live binding for a schema name or release id the caller may use, else 404. A name outside
    the key's scopes gets the very answer an unknown name gets, so names cannot be probed (D3)."""
    binding = gw.table.find(name)
    if binding is not None and caller.may_use(binding.schema_name):
        gw.table.check_current(binding)  # 422 when the registry moved past its schema version (B5)
        return binding
    scoped = caller.may_use(name)
    gw.metrics.rejections.labels("not_found" if scoped else "out_of_scope").inc()
    refused = gw.table.refused.get(name) if scoped else None
    why = "; its release was refused (an admin sees why in POST /admin/reload)" if refused else ""
    raise ApiError(404, "not_found", f"no live release for {name!r}{why}. See GET /v1/schemas")
