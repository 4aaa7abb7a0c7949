"""Teacher mode of `forma generate`: an OpenAI-compatible chat endpoint writes inputs or labels texts.

The client is passed in (an `openai.OpenAI` with `base_url`), never built here, so any endpoint works:
a local vLLM, a hosted model, or a test double. Whatever the teacher returns is checked exactly like a
user's pair before it can be stored.
"""

from __future__ import annotations

import json
from typing import Any

from schemas.canonical import canonical_output, canonical_schema_json
from schemas.errors import PairIssue
from schemas.pairs import RawPair, check_record, file_synthetic

WRITE_PROMPT = (
    "Write a short, realistic document (an email, note or message) from which a reader could "
    "extract exactly this JSON record. Mention every value in it; add nothing that contradicts it. "
    "Reply with the document text only.\n\nJSON record:\n{output}"
)
LABEL_PROMPT = (
    "Extract one JSON object from the user's text. It must follow this JSON Schema:\n{schema}\n"
    "Reply with the JSON object only."
)


def _chat(client: Any, model: str, messages: list[dict[str, str]], **extra: Any) -> str:
    reply = client.chat.completions.create(model=model, messages=messages, temperature=0.7, **extra)
    return (reply.choices[0].message.content or "").strip()


def teacher_inputs(
    client: Any, model: str, schema: dict[str, Any], outputs: list[Any], label: str = "teacher"
) -> tuple[list[RawPair], list[PairIssue]]:
    """For each sampled output, ask the teacher for an input text that carries it."""
    pairs: list[RawPair] = []
    issues: list[PairIssue] = []
    for i, output in enumerate(outputs, 1):
        prompt = WRITE_PROMPT.format(output=canonical_output(output, schema))
        text = _chat(client, model, [{"role": "user", "content": prompt}])
        checked = check_record({"input": text, "output": output}, schema, label, i)
        file_synthetic(checked, pairs, issues)
    return pairs, issues


def teacher_labels(
    client: Any, model: str, schema: dict[str, Any], texts: list[str], label: str = "teacher"
) -> tuple[list[RawPair], list[PairIssue]]:
    """Ask the teacher to label raw texts; a reply that is not schema-valid JSON is an issue, not a pair."""
    pairs: list[RawPair] = []
    issues: list[PairIssue] = []
    system = LABEL_PROMPT.format(schema=canonical_schema_json(schema))
    fmt = {"type": "json_schema", "json_schema": {"name": "record", "schema": schema}}
    for i, text in enumerate(texts, 1):
        reply = _chat(
            client,
            model,
            [{"role": "system", "content": system}, {"role": "user", "content": text}],
            response_format=fmt,
        )
        try:
            output = json.loads(reply)
        except json.JSONDecodeError as err:
            issues.append(
                PairIssue(
                    file=label,
                    line=i,
                    kind="parse",
                    pointer="/output",
                    message=f"the teacher's reply is not JSON ({err.msg})",
                )
            )
            continue
        checked = check_record({"input": text, "output": output}, schema, label, i)
        file_synthetic(checked, pairs, issues)
    return pairs, issues
