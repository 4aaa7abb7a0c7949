"""FastAPI dependencies as `Annotated` aliases: the gateway, the authenticated caller, an admission slot,
and the live binding of the schema a request names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from serve.auth import OPEN_ACCESS, ApiKey, find_key
from serve.errors import ApiError
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
    if gw.settings.open_access:
        return OPEN_ACCESS
    presented = credentials.credentials if credentials else header_key
    key = find_key(gw.keys, presented) if presented else None
    if key is None:
        gw.metrics.rejections.labels("unauthorized").inc()
        raise ApiError(
            401,
            "unauthorized",
            "missing or unknown API key: send Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key


Caller = Annotated[ApiKey, Depends(authenticate)]


def require_admin(gw: GatewayDep, caller: Caller) -> ApiKey:
    if not caller.admin:
        gw.metrics.rejections.labels("forbidden").inc()
        raise ApiError(403, "forbidden", f"key {caller.name!r} lacks the admin scope")
    return caller


Admin = Annotated[ApiKey, Depends(require_admin)]


async def admission_slot(gw: GatewayDep) -> AsyncIterator[None]:
    admitted = False
    try:
        async with gw.admission.slot():
            admitted = True
            gw.metrics.in_flight.inc()
            try:
                yield
            finally:
                gw.metrics.in_flight.dec()
    except ApiError as err:
        if not admitted:  # count refusals at the door, not errors raised by the route itself
            gw.metrics.rejections.labels(err.code).inc()
        raise


Slot = Annotated[None, Depends(admission_slot)]


def bind(gw: Gateway, caller: ApiKey, name: str) -> Binding:
    """The live binding for a schema name or release id the caller may use: 403 / 404 otherwise."""
    binding = gw.table.find(name)
    schema_name = binding.schema_name if binding else name
    if not caller.may_use(schema_name):
        gw.metrics.rejections.labels("forbidden").inc()
        raise ApiError(403, "forbidden", f"key {caller.name!r} is not scoped to schema {schema_name!r}")
    if binding is None:
        refused = gw.table.refused.get(name)
        why = f"; its release was refused: {refused.reason}" if refused else ""
        raise ApiError(404, "not_found", f"no live release for {name!r}{why}. See GET /v1/schemas")
    return binding
