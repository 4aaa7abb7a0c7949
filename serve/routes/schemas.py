"""`GET /v1/schemas`: the schemas this key may use, each with its live release and exact schema."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from serve.deps import Caller, GatewayDep
from serve.errors import responses

router = APIRouter(prefix="/v1", tags=["schemas"])


class SchemaEntry(BaseModel):
    name: str
    version: str
    release: str
    json_schema: dict[str, Any]


class SchemaList(BaseModel):
    data: list[SchemaEntry]


@router.get("/schemas", response_model=SchemaList, responses=responses(401))
async def list_schemas(gw: GatewayDep, caller: Caller) -> SchemaList:
    bindings = sorted(gw.table.bindings.values(), key=lambda b: b.schema_name)
    entries = [
        SchemaEntry(name=b.schema_name, version=b.schema_version, release=b.release_id, json_schema=b.schema)
        for b in bindings
        if caller.may_use(b.schema_name)
    ]
    return SchemaList(data=entries)
