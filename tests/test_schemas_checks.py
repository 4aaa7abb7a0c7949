"""Static schema checks (issue #3 point 1; RELIABILITY A1-A4): each bad schema is refused with its code
and JSON pointer before any grammar compile, and nothing is stored."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from schemas.checks import check_schema, parse_schema_text
from schemas.errors import SchemaError
from schemas.regexcheck import pattern_problem
from schemas.register import read_schema_source, register


def never_compiled(schema: dict) -> None:
    raise AssertionError("a schema that fails a static check must never reach the grammar compiler")


def refuse(schema: object) -> SchemaError:
    with pytest.raises(SchemaError) as caught:
        check_schema(schema)
    return caught.value


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


OBJ = {"type": "object", "properties": {"name": {"type": "string"}}}


@pytest.mark.parametrize(
    ("schema", "code", "pointer"),
    [
        (
            {"type": "object", "properties": {"name": {"type": "str"}}},
            "invalid_schema",
            "/properties/name/type",
        ),
        ({"type": "object", "required": "name"}, "invalid_schema", "/required"),
        ([], "not_an_object_schema", ""),
        (42, "not_an_object_schema", ""),
        ("", "not_an_object_schema", ""),
        (True, "not_an_object_schema", ""),
        (False, "not_an_object_schema", ""),
        ({"type": "array", "items": {"type": "string"}}, "not_an_object_schema", "/type"),
        ({**OBJ, "$schema": "http://example.com/my-draft"}, "unknown_draft", "/$schema"),
        (
            {**OBJ, "properties": {"a": {"$ref": "http://169.254.169.254/latest/meta-data"}}},
            "external_ref",
            "/properties/a/$ref",
        ),
        ({**OBJ, "properties": {"a": {"$ref": "file:///etc/passwd"}}}, "external_ref", "/properties/a/$ref"),
        ({**OBJ, "properties": {"a": {"$ref": "urn:foo"}}}, "external_ref", "/properties/a/$ref"),
        ({**OBJ, "properties": {"a": {"$ref": "#/$defs/missing"}}}, "dangling_ref", "/properties/a/$ref"),
        ({"$ref": "#", "type": "object"}, "recursive_ref", "/$ref"),
        (
            {**OBJ, "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}}},
            "recursive_ref",
            "/$defs/b/anyOf/0/$ref",
        ),
        ({**OBJ, "properties": {"a": {"enum": list(range(1001))}}}, "enum_too_large", "/properties/a/enum"),
        (
            {**OBJ, "properties": {"a": {"type": "string", "pattern": "^(a+)+$"}}},
            "bad_pattern",
            "/properties/a/pattern",
        ),
        (
            {**OBJ, "properties": {"a": {"type": "string", "pattern": "(a|aa)*$"}}},
            "bad_pattern",
            "/properties/a/pattern",
        ),
        (
            {**OBJ, "properties": {"a": {"type": "string", "pattern": "a{100}{100}{100}"}}},
            "bad_pattern",
            "/properties/a/pattern",
        ),
        (
            {**OBJ, "patternProperties": {"^(x|x?)*$": {"type": "string"}}},
            "bad_pattern",
            "/patternProperties/^(x|x?)*$",
        ),
        (
            {**OBJ, "properties": {"a": {"type": "string", "pattern": "x" * 513}}},
            "bad_pattern",
            "/properties/a/pattern",
        ),
    ],
)
def test_bad_schema_is_refused_with_code_and_pointer(
    schema: object, code: str, pointer: str, tmp_path: Path
) -> None:
    error = refuse(schema)
    assert (error.code, error.pointer) == (code, pointer)
    assert "Fix:" in str(error)
    root = tmp_path / "schemas"
    with pytest.raises(SchemaError):
        register(root, "bad", schema, check=never_compiled)
    assert snapshot(root) == []


def test_metaschema_message_names_the_bad_value() -> None:
    error = refuse({"type": "object", "properties": {"name": {"type": "str"}}})
    assert "'str' is not valid" in error.message
    assert str(error).startswith("[invalid_schema] at /properties/name/type:")


def test_declared_draft_is_honoured() -> None:
    # exclusiveMinimum is a boolean in draft-04 and a number in 2020-12: each must pass under its own draft.
    draft4 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {"n": {"type": "number", "minimum": 0, "exclusiveMinimum": True}},
    }
    check_schema(draft4)
    assert (
        refuse({**draft4, "$schema": "https://json-schema.org/draft/2020-12/schema"}).code == "invalid_schema"
    )


def test_local_refs_and_defs_work() -> None:
    schema = {
        "type": "object",
        "$defs": {
            "tag": {"type": "string"},
            "node": {
                "type": "object",
                "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            },
        },
        "properties": {"tag": {"$ref": "#/$defs/tag"}, "tree": {"$ref": "#/$defs/node"}},
    }
    assert check_schema(schema) is schema


def test_broken_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text('{"type": \n')
    with pytest.raises(SchemaError) as caught:
        read_schema_source(str(path))
    assert caught.value.code == "invalid_json"
    assert str(caught.value).startswith(f"{path}: [invalid_json]")
    assert "line 2" in caught.value.message


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("[" * 3000 + "]" * 3000, "schema_too_deep"),
        ('{"type": "object", "description": "' + "x" * (600 * 1024) + '"}', "schema_too_large"),
    ],
)
def test_bombs_are_refused_fast(text: str, code: str) -> None:
    start = time.perf_counter()
    with pytest.raises(SchemaError) as caught:
        check_schema(parse_schema_text(text))
    assert caught.value.code == code
    assert time.perf_counter() - start < 0.5


def test_100k_properties_and_deep_nesting_are_refused() -> None:
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(100_000)}}
    assert refuse(wide).code == "schema_too_large"
    deep: dict = {"type": "object"}
    for _ in range(60):
        deep = {"type": "object", "properties": {"x": deep}}
    assert refuse(deep).code == "schema_too_deep"


@pytest.mark.parametrize(
    "pattern",
    [
        "^[a-z]+$",
        r"(\d+\.)*",
        r"^[a-z0-9]+(-[a-z0-9]+)*$",
        r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*$",
        r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?$",
    ],
)
def test_safe_patterns_pass(pattern: str) -> None:
    assert pattern_problem(pattern) is None


@pytest.mark.parametrize("pattern", [r"^([a-z]+\s?)*$", r"(\.[a-z.]+)*", r"([/\w \.-]*)*", r"(x+x+)+y"])
def test_catastrophic_patterns_are_refused(pattern: str) -> None:
    assert "catastrophic" in (pattern_problem(pattern) or "")


def test_pydantic_model_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mymodels.py").write_text(
        "from pydantic import BaseModel\nclass Person(BaseModel):\n    name: str\n    age: int | None = None\n"
    )
    monkeypatch.chdir(tmp_path)
    schema, source = read_schema_source("mymodels:Person")
    assert source == "mymodels:Person"
    assert check_schema(schema)["properties"]["name"] == {"title": "Name", "type": "string"}
    with pytest.raises(SchemaError) as caught:
        read_schema_source("mymodels:Nobody")
    assert caught.value.code == "bad_model"


def test_schema_file_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(OBJ))
    assert read_schema_source(str(path)) == (OBJ, str(path))


def test_external_ref_is_never_fetched() -> None:
    """RELIABILITY A2: a sentinel server on loopback sees no request, at registration or validation."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from schemas.validation import output_errors

    hits: list[str] = []

    class Sentinel(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"type": "string"}')

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sentinel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/x.json"
        schema = {"type": "object", "properties": {"a": {"$ref": url}}}
        assert refuse(schema).code == "external_ref"
        with pytest.raises(Exception, match="Unresolvable"):
            output_errors(schema, {"a": "x"})
    finally:
        server.shutdown()
        server.server_close()
    assert hits == []
