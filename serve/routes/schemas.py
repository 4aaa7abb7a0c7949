"""`GET /v1/schemas`: the schemas this key may use, each with its live release and exact schema."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from serve.deps import Caller, GatewayDep
from serve.errors import responses

router = APIRouter(prefix="/v1", tags=["schemas"])


class SchemaEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    release: str
    json_schema: dict[str, Any]


class SchemaList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: list[SchemaEntry]


# OpenAPI links: a listed schema's name is what the extract routes take (schemathesis follows them).
LINKS = {
    name: {"operationId": name, "parameters": {"schema": "$response.body#/data/0/name"}}
    for name in ("extract", "extract_batch")
}


@router.get(
    "/schemas",
    operation_id="list_schemas",
    response_model=SchemaList,
    responses={**responses(401), 200: {"description": "The schemas this key may use.", "links": LINKS}},
)
async def list_schemas(gw: GatewayDep, caller: Caller) -> SchemaList:
    bindings = sorted(gw.table.bindings.values(), key=lambda b: b.schema_name)
    entries = [
        SchemaEntry(name=b.schema_name, version=b.schema_version, release=b.release_id, json_schema=b.schema)
        for b in bindings
        if caller.may_use(b.schema_name)
    ]
    return SchemaList(data=entries)
