"""`POST /v1/extract/{schema}` and its batch form: text in, schema-valid data out (or an explicit error)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from serve.deps import Caller, GatewayDep, Slot, bind
from serve.errors import ApiError, ErrorInfo, responses
from serve.extraction import generate, guarded
from serve.generation import Generated, check_text
from serve.logs import log

router = APIRouter(prefix="/v1/extract", tags=["extract"])
ERRORS = responses(401, 403, 404, 413, 422, 429, 502, 503, 504)


class ExtractRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The document to extract from.")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(min_length=1, description="Documents, decoded together in the engine.")


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, items: list[Generated]) -> Usage:
        prompt, completion = sum(g.prompt_tokens for g in items), sum(g.completion_tokens for g in items)
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class Served(BaseModel):
    """Which release answered: the schema, the exact version its adapter was trained on, the release id."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_name: str = Field(alias="schema")
    schema_version: str
    release: str
    usage: Usage
    latency_ms: float


class ExtractResponse(Served):
    data: Any = Field(description="The extracted record; always valid against the schema.")


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    data: Any | None = Field(default=None, description="Set when this text succeeded; schema-valid.")
    error: ErrorInfo | None = Field(default=None, description="Set when this text failed, with the reason.")


class BatchResponse(Served):
    results: list[BatchItem]


def _served(binding: Any, items: list[Generated], started: float) -> dict[str, Any]:
    return {
        "schema": binding.schema_name,
        "schema_version": binding.schema_version,
        "release": binding.release_id,
        "usage": Usage.of(items),
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
    }


@router.post("/{schema}", response_model=ExtractResponse, responses=ERRORS)
async def extract(
    schema: str, body: ExtractRequest, request: Request, gw: GatewayDep, caller: Caller, _: Slot
):
    """Extract one record from `text` with the schema's live release."""
    started = time.perf_counter()
    binding = bind(gw, caller, schema)
    check_text(body.text, gw.settings.max_text_chars)
    if gw.settings.log_text:
        log("request_text", text=body.text)
    generated = await guarded(generate(gw, binding, body.text), request, gw.settings.request_timeout_s)
    return ExtractResponse(data=generated.data, **_served(binding, [generated], started))


@router.post("/{schema}/batch", response_model=BatchResponse, responses=ERRORS)
async def extract_batch(
    schema: str, body: BatchRequest, request: Request, gw: GatewayDep, caller: Caller, _: Slot
):
    """Extract one record per text; the texts are batched in the engine. Each item succeeds or fails alone."""
    started = time.perf_counter()
    binding = bind(gw, caller, schema)
    if len(body.texts) > gw.settings.max_batch:
        raise ApiError(
            413, "too_large", f"{len(body.texts)} texts; the batch limit is {gw.settings.max_batch}"
        )
    for text in body.texts:
        check_text(text, gw.settings.max_text_chars)

    async def one(index: int, text: str) -> tuple[BatchItem, Generated | None]:
        try:
            generated = await generate(gw, binding, text)
        except ApiError as err:
            return BatchItem(
                index=index, error=ErrorInfo(code=err.code, message=err.message, details=err.details)
            ), None
        return BatchItem(index=index, data=generated.data), generated

    work = asyncio.gather(*(one(i, t) for i, t in enumerate(body.texts)))
    pairs = await guarded(work, request, gw.settings.request_timeout_s)
    done = [g for _, g in pairs if g is not None]
    return BatchResponse(results=[item for item, _ in pairs], **_served(binding, done, started))
