"""The prompt builder and the output validator as used by train, eval and serve (issue #3 point 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.prompt import build_example, build_messages, build_target, prompt_hash
from schemas.validation import output_errors

EXAMPLES = Path(__file__).resolve().parents[1] / "schemas" / "examples"
NAMES = ["support_ticket", "billing_codes", "invoice", "contact"]


def load(name: str) -> tuple[dict, str, dict]:
    folder = EXAMPLES / name
    first = json.loads((folder / "pairs.jsonl").read_text().splitlines()[0])
    return json.loads((folder / "schema.json").read_text()), (folder / "instructions.md").read_text(), first


def test_target_is_compact_in_schema_order() -> None:
    schema, _, pair = load("invoice")
    shuffled = dict(reversed(list(pair["output"].items())))
    target = build_target(schema, shuffled)
    assert list(json.loads(target)) == [k for k in schema["properties"] if k in pair["output"]]
    assert target == json.dumps(json.loads(target), separators=(",", ":"), ensure_ascii=False)


def test_tuned_prompt_has_no_schema_and_baseline_has_it() -> None:
    schema, instructions, pair = load("support_ticket")
    tuned = build_messages("support_ticket", schema, pair["input"], instructions)
    baseline = build_messages("support_ticket", schema, pair["input"], instructions, with_schema=True)
    assert tuned[1] == {"role": "user", "content": pair["input"]}
    assert "JSON Schema" not in tuned[0]["content"] and '"enum"' in baseline[0]["content"]
    example = build_example("support_ticket", schema, pair["input"], pair["output"], instructions)
    assert example["completion"][0]["content"] == build_target(schema, pair["output"])
    assert len(prompt_hash()) == 16


def test_output_errors_pointers_and_no_remote_refs() -> None:
    schema = {
        "type": "object",
        "properties": {
            "d": {"type": "string", "format": "date"},
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
        },
        "$defs": {"item": {"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}},
    }
    assert output_errors(schema, {"d": "2024-02-03", "items": [{"n": 1}]}) == []
    errors = output_errors(schema, {"d": "nope", "items": [{"n": 1}, {"n": 9}]})
    assert [(e.pointer, e.message) for e in errors] == [
        ("/items/1/n", "9 is greater than the maximum of 3"),
        ("/d", "'nope' is not a 'date'"),
    ]
    remote = {"type": "object", "properties": {"a": {"$ref": "http://127.0.0.1:9/x.json"}}}
    with pytest.raises(Exception, match="Unresolvable"):
        output_errors(remote, {"a": 1})


@pytest.mark.slow
def test_prompt_lengths_tuned_vs_with_schema(base_model: Path) -> None:
    """The measurement behind the choice of a short tuned prompt (printed with `pytest -s`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_model))
    for name in NAMES:
        schema, instructions, pair = load(name)
        sizes = {}
        for mode in (False, True):
            messages = build_messages(name, schema, pair["input"], instructions, with_schema=mode)
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            sizes[mode] = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        print(f"{name}: tuned {sizes[False]} tokens, with schema {sizes[True]} tokens")
        assert sizes[False] < sizes[True]
