"""Pure request building and output checking for one extraction. No I/O: unit-tested directly.

The prompt comes from `schemas.prompt.build_messages` (tuned mode), the one prompt format train, eval
and serve share. Output is checked with `schemas.validation`'s validator (`output_errors`' own): constrained decoding
is an optimisation, this check is the guarantee (RELIABILITY B1, B2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import ValidationError

from schemas.prompt import build_messages
from schemas.validation import pointer_of, validator_for_schema
from serve.errors import ApiError, ErrorDetail


@dataclass(frozen=True)
class Binding:
    """A schema's live release as the gateway serves it: the adapter and the exact schema it learned."""

    schema_name: str
    schema_version: str
    release_id: str
    schema: dict[str, Any]
    instructions: str | None
    adapter_path: str
    # The registry's decoder-only copy: keywords no grammar backend implements are relaxed there and
    # checked after decoding by `output_errors(schema, ...)`, so vLLM never rejects the request.
    decoder_schema: dict[str, Any] | None = None
    # The base model folder the engine serves (its tokenizer counts prompt tokens), when known here.
    base_model_path: str | None = None


@dataclass(frozen=True)
class Generated:
    data: Any
    prompt_tokens: int
    completion_tokens: int


def engine_body(binding: Binding, text: str, max_tokens: int, constrained: bool = True) -> dict[str, Any]:
    """The engine request: the release's adapter, the shared prompt, greedy decoding, explicit max_tokens."""
    body: dict[str, Any] = {
        "model": binding.release_id,
        "messages": build_messages(binding.schema_name, binding.schema, text, binding.instructions),
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    if constrained:
        body["structured_outputs"] = {"json": binding.decoder_schema or binding.schema}
    return body


def read_completion(completion: dict[str, Any], schema: dict[str, Any]) -> Generated:
    """The validated data of an engine completion, or a 502 that says why there is none."""
    choice = completion["choices"][0]
    content = choice["message"].get("content") or ""
    usage = completion.get("usage") or {}
    if choice.get("finish_reason") == "length":
        raise ApiError(
            502,
            "output_truncated",
            f"generation stopped at max_tokens ({usage.get('completion_tokens')} tokens) before the JSON "
            "was complete; raise the server's --max-tokens or shorten the schema's outputs",
        )
    try:
        data = json.loads(content)
    except ValueError as err:
        raise ApiError(502, "output_invalid_json", f"the model's output is not JSON ({err})") from None
    details = violations(schema, data)
    if details:
        raise ApiError(502, "output_schema_violation", "the model's output breaks the schema", details)
    return Generated(data, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))


def violations(schema: dict[str, Any], value: Any) -> list[ErrorDetail]:
    """Where the output breaks the schema and which keyword, deepest first, with the same validator as
    `schemas.validation.output_errors`. Never the offending value: outputs quote the document, and
    error bodies must not (RELIABILITY D5)."""
    errors = validator_for_schema(schema).iter_errors(value)
    found = sorted(errors, key=lambda e: (-len(e.absolute_path), list(map(str, e.absolute_path))))
    return [ErrorDetail(pointer=pointer_of(e.absolute_path), message=_keyword(e)) for e in found[:20]]


def _keyword(error: ValidationError) -> str:
    """e.g. "breaks maxLength 24", "breaks format 'date'", "required: missing total" (schema words only)."""
    keyword, limit = str(error.validator), error.validator_value
    if keyword == "required" and isinstance(error.instance, dict):
        missing = [name for name in limit if name not in error.instance]
        return f"required: missing {', '.join(map(str, missing))}"[:300]
    shown = json.dumps(limit) if isinstance(limit, str | int | float | bool) else ""
    return f"breaks {keyword} {shown}".strip() if len(shown) <= 80 else f"breaks {keyword}"


def check_text(text: str, max_chars: int) -> None:
    """Refuse input the engine should never see: too long (413), empty or with NUL bytes (422)."""
    if len(text) > max_chars:
        raise ApiError(413, "too_large", f"text has {len(text)} characters; the limit is {max_chars}")
    if not text.strip():
        raise ApiError(
            422, "invalid_request", "text is empty", [ErrorDetail(pointer="/text", message="empty")]
        )
    if "\x00" in text:
        raise ApiError(
            422,
            "invalid_request",
            "text contains NUL bytes",
            [ErrorDetail(pointer="/text", message="NUL byte")],
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # a lone surrogate ("\ud800" in the JSON): valid JSON, not text
        raise ApiError(
            422,
            "invalid_request",
            f"text is not valid Unicode: a lone surrogate at character {err.start}; send UTF-8 text",
            [ErrorDetail(pointer="/text", message="lone surrogate")],
        ) from None
