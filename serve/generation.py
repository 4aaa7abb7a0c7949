"""Pure request building and output checking for one extraction. No I/O: unit-tested directly.

The prompt comes from `schemas.prompt.build_messages` (tuned mode), the one prompt format train, eval
and serve share. Output is checked by `schemas.validation.output_errors`: constrained decoding is an
optimisation, this check is the guarantee (RELIABILITY B1, B2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from schemas.prompt import build_messages
from schemas.validation import output_errors
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
    errors = output_errors(schema, data)
    if errors:
        details = [ErrorDetail(pointer=e.pointer, message=e.message[:300]) for e in errors[:20]]
        raise ApiError(502, "output_schema_violation", "the model's output breaks the schema", details)
    return Generated(data, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))


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
