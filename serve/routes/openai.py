"""OpenAI-compatible `POST /v1/chat/completions` and `GET /v1/models`, so the `openai` SDK works as is.

A model is a schema's live release (its id is the release id; the schema name works too). The prompt is
still built by `schemas.prompt` from the single user message: a client cannot change the format the
adapter was trained on, and its `response_format` schema must be the one the adapter learned.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from schemas.canonical import canonical_output, schema_hash
from serve.deps import Caller, GatewayDep, Slot, bind
from serve.errors import ApiError, ErrorDetail, responses
from serve.extraction import generate, guarded
from serve.generation import Binding, check_text
from serve.routes.extract import Usage

router = APIRouter(prefix="/v1", tags=["openai"])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = Field(default=None, description="{name, schema, strict}")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A release id from GET /v1/models, or a schema name (its live release).")
    messages: list[ChatMessage] = Field(min_length=1, description="Exactly one user message: the text.")
    max_tokens: int | None = Field(default=None, ge=1, description="Capped by the server's --max-tokens.")
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    temperature: float | None = Field(default=None, description="Accepted; extraction decodes greedily.")
    top_p: float | None = Field(default=None, description="Accepted; extraction decodes greedily.")
    seed: int | None = None
    user: str | None = None
    n: Literal[1] = 1
    stream: Literal[False] = False


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "forma"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def user_text(messages: list[ChatMessage]) -> str:
    """The one user message's text. Other roles are refused: forma owns the system prompt."""
    if len(messages) != 1 or messages[0].role != "user":
        raise ApiError(
            422,
            "invalid_request",
            "send exactly one message, role 'user', holding the text; "
            "forma builds the instructions from the registered schema",
            [ErrorDetail(pointer="/messages", message="expected [{role: user, content: TEXT}]")],
        )
    content = messages[0].content
    if isinstance(content, list):
        content = "".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
    return content or ""


def check_response_format(fmt: ResponseFormat | None, binding: Binding) -> None:
    if fmt is None or fmt.type != "json_schema":
        return
    asked = (fmt.json_schema or {}).get("schema")
    if not isinstance(asked, dict) or schema_hash(asked) != schema_hash(binding.schema):
        raise ApiError(
            422,
            "schema_mismatch",
            f"response_format.json_schema.schema differs from schema "
            f"{binding.schema_name} {binding.schema_version[:12]} that release {binding.release_id} "
            "was trained on; omit it or send that exact schema (GET /v1/schemas)",
            [ErrorDetail(pointer="/response_format/json_schema/schema", message="schema mismatch")],
        )


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses=responses(401, 403, 404, 413, 422, 429, 502, 503, 504),
)
async def chat_completions(body: ChatRequest, request: Request, gw: GatewayDep, caller: Caller, _: Slot):
    """Extraction in OpenAI's shape: the reply's content is the schema-valid JSON record."""
    binding = bind(gw, caller, body.model)
    check_response_format(body.response_format, binding)
    text = user_text(body.messages)
    check_text(text, gw.settings.max_text_chars)
    max_tokens = body.max_completion_tokens or body.max_tokens
    generated = await guarded(generate(gw, binding, text, max_tokens), request, gw.settings.request_timeout_s)
    content = canonical_output(generated.data, binding.schema)
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=binding.release_id,
        choices=[Choice(message=AssistantMessage(content=content))],
        usage=Usage.of([generated]),
    )


@router.get("/models", response_model=ModelList, responses=responses(401))
async def list_models(gw: GatewayDep, caller: Caller) -> ModelList:
    """The live releases this key may use, one model per schema."""
    bindings = [b for b in gw.table.bindings.values() if caller.may_use(b.schema_name)]
    return ModelList(data=[ModelCard(id=b.release_id) for b in sorted(bindings, key=lambda b: b.schema_name)])
