"""`POST /v1/extract/{schema}` and its batch form: text in, schema-valid data out (or an explicit error)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from serve.deps import Caller, Deadline, GatewayDep, bind, remaining
from serve.errors import ApiError, ErrorInfo, responses
from serve.extraction import generate, guarded
from serve.generation import Generated, check_text
from serve.logs import log

router = APIRouter(prefix="/v1/extract", tags=["extract"])
ERRORS = responses(401, 404, 413, 422, 429, 499, 502, 503, 504)
EXAMPLE_TEXT = "Invoice from ACME Tools, total 120 EUR, already paid by card."
# Request bodies: unknown fields and loosely typed values ("5" for 5, 0 for false) are refused (D4).
STRICT = ConfigDict(extra="forbid", strict=True)
# A text forma decodes: one visible character at least, no NUL (`check_text`'s rules, in the spec so
# clients and contract fuzzers know them). The length limit is the server's --max-text-chars (413).
Text = Annotated[
    str,
    Field(
        pattern=r"^[^\x00]*[^\s\x00\x1c-\x1f][^\x00]*$",
        description="UTF-8 text with a visible character and no NUL; at most --max-text-chars (413).",
    ),
]
SchemaName = Annotated[
    str, Path(description="A schema name from GET /v1/schemas, or a release id.", examples=["invoice"])
]


class ExtractRequest(BaseModel):
    model_config = STRICT

    text: Text = Field(description="The document to extract from.", examples=[EXAMPLE_TEXT])


class BatchRequest(BaseModel):
    model_config = STRICT

    texts: list[Text] = Field(
        min_length=1,
        description="Documents, decoded together in the engine; at most --max-batch (413).",
        examples=[[EXAMPLE_TEXT]],
    )


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


@router.post("/{schema}", operation_id="extract", response_model=ExtractResponse, responses=ERRORS)
async def extract(
    schema: SchemaName,
    body: ExtractRequest,
    request: Request,
    gw: GatewayDep,
    caller: Caller,
    deadline: Deadline,
):
    """Extract one record from `text` with the schema's live release."""
    started = time.perf_counter()
    binding = bind(gw, caller, schema)
    check_text(body.text, gw.settings.max_text_chars)
    if gw.settings.log_text:
        log("request_text", text=body.text)
    generated = await guarded(generate(gw, binding, body.text), request, remaining(deadline))
    return ExtractResponse(data=generated.data, **_served(binding, [generated], started))


@router.post("/{schema}/batch", operation_id="extract_batch", response_model=BatchResponse, responses=ERRORS)
async def extract_batch(
    schema: SchemaName,
    body: BatchRequest,
    request: Request,
    gw: GatewayDep,
    caller: Caller,
    deadline: Deadline,
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
    pairs = await guarded(work, request, remaining(deadline))
    done = [g for _, g in pairs if g is not None]
    return BatchResponse(results=[item for item, _ in pairs], **_served(binding, done, started))
