"""Static checks on an untrusted schema, all run before any grammar compile (RELIABILITY A1-A4, A6).

Order matters: cheap size and depth caps first (so a bomb is refused in milliseconds and never reaches
a recursive walker), then the metaschema, then `$ref`s, the top-level type, patterns and formats.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import exceptions, validators
from referencing import Registry

from schemas.canonical import resolve_ref
from schemas.errors import SchemaError
from schemas.formats import CHECKED_FORMATS
from schemas.refs import check_ref_cycles, ref_targets
from schemas.regexcheck import pattern_problem
from schemas.validation import pointer_of
from schemas.walk import escape, json_depth, subschemas

MAX_BYTES = 512 * 1024  # the largest real-world schema in jsonschemabench is 457 KB
MAX_DEPTH = 48  # JSON nesting; vLLM refuses more than 64, the deepest benchmark schema is 19
MAX_SUBSCHEMAS = 5000  # the largest benchmark schema has ~4100
MAX_ENUM = 1000
KNOWN_DRAFTS = {uri.rstrip("#") for uri in validators._META_SCHEMAS}  # type: ignore[attr-defined]


def parse_schema_text(text: str) -> Any:
    """JSON text -> value, with size and depth caps before the parser can recurse."""
    size = len(text.encode("utf-8", "surrogatepass"))  # a lone surrogate is refused below, not here
    if size > MAX_BYTES:
        raise SchemaError(
            "schema_too_large",
            f"the schema is {size} bytes; the limit is {MAX_BYTES}",
            "",
            "split it, or drop long descriptions the model does not need",
        )
    try:
        return json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise SchemaError(
            "schema_too_deep", f"the schema nests deeper than {MAX_DEPTH} levels", "", "flatten it"
        ) from None
    except json.JSONDecodeError as err:
        raise SchemaError(
            "invalid_json",
            f"not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})",
            None,
            "fix the JSON syntax",
        ) from None
    except ValueError as err:  # NaN / Infinity, which Python's parser accepts and JSON does not
        raise SchemaError("invalid_json", f"not valid JSON: {err}", None, "fix the JSON syntax") from None


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number; write a finite number or null")


def check_json_size(schema: dict[str, Any]) -> None:
    """The byte cap for a schema handed in as a value (the library door), and JSON-only content."""
    try:
        size = len(json.dumps(schema, ensure_ascii=False, allow_nan=False).encode())
    except (TypeError, ValueError) as err:  # a set, NaN, a lone surrogate: nothing JSON can store
        raise SchemaError(
            "invalid_json",
            f"the schema holds a value JSON cannot represent ({err})",
            "",
            "give plain JSON: objects, arrays, strings, finite numbers, booleans, null",
        ) from None
    if size > MAX_BYTES:
        raise SchemaError(
            "schema_too_large",
            f"the schema is {size} bytes as JSON; the limit is {MAX_BYTES}",
            "",
            "split it, or drop long descriptions the model does not need",
        )


def check_caps(schema: Any) -> None:
    if not isinstance(schema, dict):
        raise SchemaError(
            "not_an_object_schema",
            f"the schema is a JSON {type(schema).__name__}, not an object",
            "",
            'write an object schema such as {"type": "object", "properties": {...}}',
        )
    if (depth := json_depth(schema)) > MAX_DEPTH:
        raise SchemaError(
            "schema_too_deep",
            f"the schema nests {depth} levels; the limit is {MAX_DEPTH}",
            "",
            "flatten it or use $defs",
        )
    for count, (pointer, node) in enumerate(subschemas(schema), 1):
        if count > MAX_SUBSCHEMAS:
            raise SchemaError(
                "schema_too_large",
                f"more than {MAX_SUBSCHEMAS} subschemas",
                "",
                "split the schema into smaller ones",
            )
        if isinstance(node.get("enum"), list) and len(node["enum"]) > MAX_ENUM:
            raise SchemaError(
                "enum_too_large",
                f"enum has {len(node['enum'])} values; the limit is {MAX_ENUM}",
                f"{pointer}/enum",
                "use a string with a pattern, or fewer values",
            )
    check_json_size(schema)


def check_metaschema(schema: dict[str, Any]) -> None:
    """Validate against the declared draft (`$schema`), Draft 2020-12 when none is declared."""
    declared = schema.get("$schema")
    if declared is not None and (not isinstance(declared, str) or declared.rstrip("#") not in KNOWN_DRAFTS):
        raise SchemaError(
            "unknown_draft",
            f"unknown $schema {declared!r}",
            "/$schema",
            "use https://json-schema.org/draft/2020-12/schema or remove $schema",
        )
    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    # An explicit registry, as for every validator forma builds: the drafts' own metaschemas only.
    error = exceptions.best_match(cls(cls.META_SCHEMA, registry=Registry()).iter_errors(schema))
    if error is not None:
        raise SchemaError(
            "invalid_schema",
            error.message,
            pointer_of(error.absolute_path),
            f"make it valid {cls.__name__.removesuffix('Validator')} JSON Schema",
        )


def _describes_object(node: Any, root: dict[str, Any], depth: int = 0) -> bool:
    """Whether every instance of `node` is a JSON object (following local refs and combinators)."""
    if not isinstance(node, dict) or depth > 16:
        return False
    kind = node.get("type")
    if kind is not None:
        return kind == "object" or kind == ["object"]
    if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#"):
        return _describes_object(resolve_ref({"$ref": node["$ref"]}, root), root, depth + 1)
    if any(
        isinstance(node.get(k), list)
        and node[k]
        and all(_describes_object(b, root, depth + 1) for b in node[k])
        for k in ("anyOf", "oneOf")
    ):
        return True
    if any(_describes_object(b, root, depth + 1) for b in node.get("allOf", []) or []):
        return True
    return any(k in node for k in ("properties", "required", "additionalProperties", "patternProperties"))


def check_object_root(schema: dict[str, Any]) -> None:
    if _describes_object(schema, schema):
        return
    raise SchemaError(
        "not_an_object_schema",
        f"the top level does not describe a JSON object (type {schema.get('type')!r})",
        "/type",
        'set "type": "object" at the top level: forma extracts one JSON object per input',
    )


def check_patterns(schema: dict[str, Any]) -> None:
    for pointer, node in subschemas(schema):
        found = [("pattern", node.get("pattern"))] if "pattern" in node else []
        found += [(f"patternProperties/{escape(k)}", k) for k in (node.get("patternProperties") or {})]
        for where, pattern in found:
            problem = pattern_problem(pattern)
            if problem:
                raise SchemaError(
                    "bad_pattern", problem, f"{pointer}/{where}", "rewrite or remove this pattern"
                )


def _may_be_string(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    return kind is None or kind == "string" or (isinstance(kind, list) and "string" in kind)


def check_formats(schema: dict[str, Any]) -> None:
    """A string `format` nobody checks would pass anything: refuse it (RELIABILITY A6).

    Formats on non-string types (UI hints such as `grid`, OpenAPI's `int32`) assert nothing in JSON
    Schema, so they are left alone.
    """
    for pointer, node in subschemas(schema):
        fmt = node.get("format")
        if isinstance(fmt, str) and fmt not in CHECKED_FORMATS and _may_be_string(node):
            raise SchemaError(
                "unsupported_format",
                f"format {fmt!r} is checked neither by the decoder nor by forma's output validator",
                f"{pointer}/format",
                f"use one of {', '.join(sorted(CHECKED_FORMATS))}, or describe the value with a pattern",
            )


def check_schema(schema: Any) -> dict[str, Any]:
    """Every static check, in order; returns the schema when it passes."""
    check_caps(schema)
    check_metaschema(schema)
    targets = ref_targets(schema)
    check_ref_cycles(schema, targets)
    check_object_root(schema)
    check_patterns(schema)
    check_formats(schema)
    return schema
