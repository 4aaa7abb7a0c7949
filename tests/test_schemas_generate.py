"""Synthetic pairs (issue #3 point 4): sampled outputs are valid, inputs carry what outputs say, the
committed example pairs are reproducible, and the teacher mode talks to an OpenAI-compatible server."""

from __future__ import annotations

import json
import random
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.examples.build import build
from schemas.generate import load_templates, load_vocab, sample_outputs, synthesize
from schemas.sampler import sample
from schemas.validation import output_errors

EXAMPLES = Path(__file__).resolve().parents[1] / "schemas" / "examples"
NAMES = ["support_ticket", "billing_codes", "invoice", "contact"]
BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "jsonschemabench" / "schemas"


def schema_of(name: str) -> dict:
    return json.loads((EXAMPLES / name / "schema.json").read_text())


OTHER_SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "when": {"type": "string", "format": "date-time"},
            "n": {"type": "integer", "exclusiveMinimum": 3, "maximum": 9},
            "x": {"type": "number", "minimum": -2.5},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "minItems": 1, "maxItems": 2},
            "kind": {"anyOf": [{"type": "null"}, {"const": "k"}]},
            "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"},
        },
        "required": ["when", "n", "code"],
        "$defs": {"tag": {"type": "string", "minLength": 2, "maxLength": 4}},
    },
]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), which=st.sampled_from([*NAMES, "other"]))
def test_any_instance_the_generator_emits_validates(seed: int, which: str) -> None:
    schema = OTHER_SCHEMAS[0] if which == "other" else schema_of(which)
    value = sample(schema, random.Random(seed))
    assert output_errors(schema, value) == []


def test_hypothesis_fallback_for_schemas_the_walker_cannot_sample() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"allOf": [{"type": "integer"}, {"multipleOf": 7}]}},
        "required": ["a"],
        "additionalProperties": False,
    }
    values = sample_outputs(schema, 5, random.Random(0), seed=0)
    assert len(values) == 5 and all(output_errors(schema, v) == [] for v in values)


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("name", NAMES)
def test_committed_pairs_are_reproducible_valid_and_grounded(name: str) -> None:
    committed = [json.loads(line) for line in (EXAMPLES / name / "pairs.jsonl").read_text().splitlines()]
    assert len(committed) >= 300
    assert committed[:40] == build(name, n=40)  # the build script reproduces the committed file
    schema = schema_of(name)
    for row in committed:
        assert output_errors(schema, row["output"]) == []
        text = row["input"].lower()
        for value in _strings(row["output"]):
            if not re.fullmatch(
                r"[A-Z]{3}|[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?|low|medium|high|urgent|positive|"
                r"neutral|negative|billing|technical|account|shipping|other",
                value,
            ):
                assert value.lower() in text, (name, value, row["input"])


@pytest.mark.parametrize("name", NAMES)
def test_synthesize_from_the_example_templates(name: str) -> None:
    folder = EXAMPLES / name / "templates"
    pairs, issues = synthesize(schema_of(name), load_templates(folder), 25, seed=1, vocab=load_vocab(folder))
    assert issues == [] and len(pairs) == 25 and all(p.synthetic for p in pairs)
    again, _ = synthesize(schema_of(name), load_templates(folder), 25, seed=1, vocab=load_vocab(folder))
    assert [p.input for p in again] == [p.input for p in pairs]


class FakeTeacher(BaseHTTPRequestHandler):
    """TEST DOUBLE of an external teacher LLM (none can be reached here): a minimal OpenAI-compatible
    /v1/chat/completions that writes a document from the JSON in the prompt, or labels a text with a
    scripted (sometimes schema-breaking) reply, and records every request."""

    requests: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeTeacher.requests.append(body)
        last = body["messages"][-1]["content"]
        if "JSON record:" in last:
            record = json.loads(last.split("JSON record:\n", 1)[1])
            content = "Note: " + "; ".join(f"{k} is {v}" for k, v in record.items())
        elif "bad" in last:
            content = '{"first_name": 5, "last_name": "X"}'
        else:
            first, last_name = last.split()[:2]
            content = json.dumps({"first_name": first, "last_name": last_name})
        reply = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
            ],
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def teacher_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTeacher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeTeacher.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_teacher_writes_inputs_and_labels_texts(teacher_url: str) -> None:
    from openai import OpenAI

    from schemas.teacher import teacher_inputs, teacher_labels

    client = OpenAI(base_url=teacher_url, api_key="unused", max_retries=0)
    schema = schema_of("contact")
    outputs = sample_outputs(schema, 3, random.Random(0), seed=0)
    pairs, issues = teacher_inputs(client, "teacher", schema, outputs)
    assert issues == [] and [p.output for p in pairs] == outputs and all(p.synthetic for p in pairs)
    assert all(outputs[i]["first_name"] in pairs[i].input for i in range(3))
    labelled, bad = teacher_labels(client, "teacher", schema, ["Ada Lovelace wrote", "a bad text"])
    assert [p.output for p in labelled] == [{"first_name": "Ada", "last_name": "Lovelace"}]
    assert [(i.line, i.pointer) for i in bad] == [(2, "/output/first_name")]
    assert FakeTeacher.requests[-1]["response_format"]["json_schema"]["schema"] == schema


@pytest.mark.slow
@pytest.mark.skipif(not BENCH.exists(), reason="jsonschemabench sample not present")
def test_sampled_instances_of_real_world_schemas_validate() -> None:
    """The property on 250 real-world schemas: whatever the walker emits is valid (it may decline)."""
    from schemas.checks import check_schema
    from schemas.errors import SchemaError
    from schemas.sampler import Unsampleable

    emitted = 0
    for path in sorted(BENCH.glob("*.json")):
        schema = json.loads(path.read_text())
        try:
            check_schema(schema)
        except SchemaError:
            continue
        for seed in range(2):
            try:
                value = sample(schema, random.Random(seed))
            except (Unsampleable, RecursionError):
                continue
            emitted += 1
            assert output_errors(schema, value) == [], path.name
    assert emitted > 300
