"""OpenAI-compatible `POST /v1/chat/completions` and `GET /v1/models`, so the `openai` SDK works as is.

A model is a schema's live release (its id is the release id; the schema name works too). The prompt is
still built by `schemas.prompt` from the single user message: a client cannot change the format the
adapter was trained on, and its `response_format` schema must be the one the adapter learned.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from schemas.canonical import canonical_output, schema_hash
from serve.deps import Caller, Deadline, GatewayDep, bind, remaining
from serve.errors import ApiError, ErrorDetail, responses
from serve.extraction import generate, guarded
from serve.generation import Binding, check_text
from serve.routes.extract import STRICT, Text, Usage

router = APIRouter(prefix="/v1", tags=["openai"])


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: 5 and 5.0 are, "5" and true are not (strict mode alone refuses 5.0)."""
    if type(value) is float and value.is_integer():
        return int(value)
    if type(value) is not int:
        raise ValueError("expected a JSON integer")
    return value


def _json_false(value: Any) -> Any:
    """`false` only: 0 == False in Python, so a Literal[False] alone would take 0."""
    if value is not False:
        raise ValueError("expected false: streaming is not supported")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]
TokenCount = Annotated[int, Field(ge=1), BeforeValidator(_json_integer)]


class TextPart(BaseModel):
    model_config = STRICT

    type: Literal["text"]
    text: Text


class UserMessage(BaseModel):
    """The one message forma takes: the document. forma builds the instructions from the registered
    schema, so system, developer, assistant and tool messages are refused (422)."""

    model_config = STRICT

    role: Literal["user"]
    content: Text | Annotated[list[TextPart], Field(min_length=1)]
    name: str | None = None


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] = Field(
        alias="schema", description="Must be the schema the release was trained on (else 409)."
    )
    strict: bool | None = None


class TextFormat(BaseModel):
    model_config = STRICT

    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = STRICT

    type: Literal["json_object"]


class JsonSchemaFormat(BaseModel):
    model_config = STRICT

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class ChatRequest(BaseModel):
    model_config = STRICT

    model: str = Field(
        description="A release id from GET /v1/models, or a schema name (its live release).",
        examples=["invoice"],
    )
    messages: list[UserMessage] = Field(
        min_length=1,
        max_length=1,
        description="Exactly one user message: the text.",
        examples=[[{"role": "user", "content": "Invoice from ACME Tools, 120 EUR, paid."}]],
    )
    max_tokens: TokenCount | None = Field(default=None, description="Capped by the server's --max-tokens.")
    max_completion_tokens: TokenCount | None = None
    response_format: ResponseFormat | None = None
    temperature: float | None = Field(default=None, description="Accepted; extraction decodes greedily.")
    top_p: float | None = Field(default=None, description="Accepted; extraction decodes greedily.")
    seed: JsonInt | None = None
    user: str | None = None
    n: Annotated[Literal[1], BeforeValidator(_json_integer)] = 1
    stream: Annotated[Literal[False], BeforeValidator(_json_false)] = False


class AssistantMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class ChatCompletion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "forma"


class ModelList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object: Literal["list"] = "list"
    data: list[ModelCard]


def user_text(messages: list[UserMessage]) -> str:
    """The one user message's text (its text parts joined)."""
    content = messages[0].content
    return content if isinstance(content, str) else "".join(part.text for part in content)


def check_response_format(fmt: ResponseFormat | None, binding: Binding) -> None:
    """A json_schema response_format must be the schema the release learned: 409 (it conflicts with
    the live release, which a later release may change) rather than a silently different output."""
    if not isinstance(fmt, JsonSchemaFormat):
        return
    if schema_hash(fmt.json_schema.schema_) != schema_hash(binding.schema):
        raise ApiError(
            409,
            "schema_mismatch",
            f"response_format.json_schema.schema differs from schema "
            f"{binding.schema_name} {binding.schema_version[:12]} that release {binding.release_id} "
            "was trained on; omit it or send that exact schema (GET /v1/schemas)",
            [ErrorDetail(pointer="/response_format/json_schema/schema", message="schema mismatch")],
        )


@router.post(
    "/chat/completions",
    operation_id="chat_completions",
    response_model=ChatCompletion,
    responses=responses(401, 404, 409, 413, 422, 429, 499, 502, 503, 504),
)
async def chat_completions(
    body: ChatRequest, request: Request, gw: GatewayDep, caller: Caller, deadline: Deadline
):
    """Extraction in OpenAI's shape: the reply's content is the schema-valid JSON record."""
    binding = bind(gw, caller, body.model)
    check_response_format(body.response_format, binding)
    text = user_text(body.messages)
    check_text(text, gw.settings.max_text_chars)
    max_tokens = body.max_completion_tokens or body.max_tokens
    work = generate(gw, binding, text, max_tokens)
    generated = await guarded(work, request, remaining(deadline))
    content = canonical_output(generated.data, binding.schema)
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=binding.release_id,
        choices=[Choice(message=AssistantMessage(content=content))],
        usage=Usage.of([generated]),
    )


CHAT_LINK = {
    "operationId": "chat_completions",
    "requestBody": {
        "model": "$response.body#/data/0/id",
        "messages": [{"role": "user", "content": "ACME, 3 EUR"}],
    },
}


@router.get(
    "/models",
    operation_id="list_models",
    response_model=ModelList,
    responses={**responses(401), 200: {"description": "Live releases.", "links": {"chat": CHAT_LINK}}},
)
async def list_models(gw: GatewayDep, caller: Caller) -> ModelList:
    """The live releases this key may use, one model per schema."""
    bindings = [b for b in gw.table.bindings.values() if caller.may_use(b.schema_name)]
    return ModelList(data=[ModelCard(id=b.release_id) for b in sorted(bindings, key=lambda b: b.schema_name)])
