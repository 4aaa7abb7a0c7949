"""Helpers (no tests) for the registry battery (test_rel_schemas, test_rel_grammar, test_rel_dataset).

Registration is a library/CLI door in forma, not an HTTP route: RELIABILITY's "422 with error.code and a
pointer" is the registry's `SchemaError` (its `code` and `pointer`) or `PairsRefused` (file:line pointer
per issue), and the CLI's exit status 1 with that message. "Nothing is stored" is a registry folder that
is byte-identical before and after.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from schemas.report import GrammarReport

Schema = dict[str, Any]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every stored file and its bytes. Lock files are not data: a refused write may create one."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".locks" not in p.parts
    }


class Sentinel:
    """A loopback HTTP server that records every request it gets (RELIABILITY A2: must stay at 0)."""

    def __init__(self) -> None:
        hits: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/schema+json")
                self.end_headers()
                self.wfile.write(b'{"type": "string"}')

            def log_message(self, *args: object) -> None:
                pass

        self.hits = hits
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Sentinel:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class CountingCheck:
    """The real grammar check, instrumented: records every schema the registry asks it to compile."""

    def __init__(self, check: Callable[[Schema], GrammarReport]) -> None:
        self.check, self.asked = check, list[Schema]()

    def __call__(self, schema: Schema) -> GrammarReport:
        self.asked.append(schema)
        return self.check(schema)


@contextmanager
def cpu_and_wall() -> Iterator[dict[str, float]]:
    """Measure this process's CPU seconds (what a check costs, whatever else runs on the shared
    machine) and the wall seconds it took."""
    out: dict[str, float] = {}
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        yield out
    finally:
        out["cpu"], out["wall"] = time.process_time() - cpu, time.perf_counter() - wall


def nested_one_of(depth: int) -> Schema:
    """vLLM's `generate_nested_schema` (tests/v1/structured_output/test_grammar_compilation_timeout.py,
    #54003): nested oneOf that makes a grammar compiler branch exponentially."""
    schema: Schema = {"type": "string"}
    for _ in range(depth):
        schema = {
            "oneOf": [
                {"type": "object", "properties": {"x": schema}, "required": ["x"]},
                {"type": "object", "properties": {"y": schema}, "required": ["y"]},
            ]
        }
    return schema


# Hypothesis strategies for A1: arbitrary JSON, and dicts built from JSON Schema keywords with values
# that mean something to them (types, refs, patterns, formats, drafts), so the fuzz reaches deep checks.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(
        [
            *("object", "string", "array", "#", "#/$defs/a", "#/properties/a", "urn:x"),
            *("(a+)+", "^[a-z]+$", "[", "date-time", "phone", "https://json-schema.org/draft/2020-12/schema"),
        ]
    )
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
)
KEYWORDS = [
    "type", "properties", "items", "$ref", "$defs", "allOf", "anyOf", "oneOf", "not", "enum", "const",
    "pattern", "patternProperties", "required", "additionalProperties", "format", "minLength", "maxLength",
    "minimum", "$schema", "$id", "$anchor", "$dynamicRef", "if", "then", "prefixItems", "contains",
    "propertyNames", "dependentSchemas", "multipleOf", "uniqueItems",
]  # fmt: skip
SCHEMA_LIKE = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYWORDS) | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=30,
)
OBJECT_SCHEMAS = st.builds(
    lambda props, extra: {"type": "object", "properties": props, **extra},
    st.dictionaries(st.sampled_from(["a", "b", "c"]), SCHEMA_LIKE, max_size=3),
    st.dictionaries(st.sampled_from(KEYWORDS), SCHEMA_LIKE, max_size=3),
)
# Mostly-valid properties with keywords of the right type, so the fuzz also reaches the compile, the
# probes and the store (random dicts are nearly always refused by the metaschema).
TYPED_PROPERTY = st.fixed_dictionaries(
    {"type": st.sampled_from(["string", "integer", "number", "boolean", "array", "object", "null"])},
    optional={
        "minLength": st.integers(0, 4),
        "maxLength": st.integers(4, 40),
        "pattern": st.sampled_from(["^[a-z]+$", r"^\d{3}-\d{2}$", "^(a|b)c?$", "(a+)+", r"^(.*?,){20}P"]),
        "format": st.sampled_from(["date", "date-time", "email", "uuid", "uri", "phone", "iri"]),
        "enum": st.lists(st.text(max_size=5), min_size=1, max_size=4, unique=True),
        "minimum": st.integers(-10, 10),
        "multipleOf": st.sampled_from([2, 0.5]),
        "items": st.sampled_from([{"type": "string"}, {"type": "integer", "minimum": 0}, {"$ref": "#"}]),
        "uniqueItems": st.booleans(),
        "contains": st.just({"type": "integer"}),
        "properties": st.dictionaries(st.sampled_from(["x", "y"]), st.just({"type": "string"}), max_size=2),
        "additionalProperties": st.booleans(),
        "$ref": st.sampled_from(["#", "#/$defs/missing", "urn:x"]),
    },
)
TYPED_SCHEMAS = st.builds(
    lambda props, required: {
        "type": "object",
        "properties": props,
        "required": sorted(required & set(props)),
    },
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), TYPED_PROPERTY, min_size=1, max_size=4),
    st.sets(st.sampled_from(["a", "b", "c", "d"])),
)
