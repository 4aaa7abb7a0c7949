"""The prompt builder: the single source of truth for what train, eval and serve send to the model.

Train/serve skew is the classic bug of this field, so no other module formats a prompt. Every run
manifest records `prompt_hash()`, and eval and serve refuse a run whose hash differs from this code's.

Two modes:
- tuned (default): instructions + input only. The adapter has learned the schema, and every prompt token
  costs time on every training step and request.
- with_schema: the schema is written into the system message, for the untuned base model baseline.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from schemas.canonical import canonical_output, canonical_schema_json

Schema = dict[str, Any]
Message = dict[str, str]

DEFAULT_INSTRUCTIONS = "Extract the {name} record from the user's text. Reply with one JSON object only."
SCHEMA_BLOCK = "The JSON object must follow this JSON Schema:\n{schema}"


def system_text(name: str, schema: Schema, instructions: str | None, with_schema: bool) -> str:
    text = (instructions or DEFAULT_INSTRUCTIONS.format(name=name)).strip()
    if with_schema:
        text += "\n\n" + SCHEMA_BLOCK.format(schema=canonical_schema_json(schema))
    return text


def build_messages(
    name: str,
    schema: Schema,
    text: str,
    instructions: str | None = None,
    with_schema: bool = False,
) -> list[Message]:
    """Chat messages for one extraction: system (instructions [+ schema]) and user (the input text)."""
    return [
        {"role": "system", "content": system_text(name, schema, instructions, with_schema)},
        {"role": "user", "content": text},
    ]


def build_target(schema: Schema, output: Any) -> str:
    """The assistant message the model must emit for `output`: canonical compact JSON."""
    return canonical_output(output, schema)


def build_example(
    name: str, schema: Schema, text: str, output: Any, instructions: str | None = None
) -> dict[str, list[Message]]:
    """A training example in TRL's prompt-completion conversational form (loss on the completion only)."""
    return {
        "prompt": build_messages(name, schema, text, instructions),
        "completion": [{"role": "assistant", "content": build_target(schema, output)}],
    }


_PROBE_SCHEMA: Schema = {
    "type": "object",
    "properties": {"b": {"type": "string"}, "a": {"type": "array", "items": {"type": "integer"}}},
}


def prompt_hash() -> str:
    """Hash of the builder's behaviour: what it renders for a fixed probe in both modes.

    It changes when the format changes (a different prompt means a different model input), and not
    for edits that render the same, so a comment fix does not invalidate trained runs.
    """
    rendered = [
        build_messages("probe", _PROBE_SCHEMA, "input é", "do it", with_schema=True),
        build_messages("probe", _PROBE_SCHEMA, "input é"),
        build_target(_PROBE_SCHEMA, {"a": [2, 1], "b": "x", "z": None}),
    ]
    return hashlib.sha256(json.dumps(rendered, ensure_ascii=False).encode()).hexdigest()[:16]
