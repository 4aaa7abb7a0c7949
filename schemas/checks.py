"""Static checks on an untrusted schema, all run before any grammar compile (RELIABILITY A1-A4).

Order matters: cheap size and depth caps first (so a bomb is refused in milliseconds and never reaches
a recursive walker), then the metaschema, then `$ref`s and patterns.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema import exceptions, validators
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from schemas.canonical import resolve_ref
from schemas.errors import SchemaError
from schemas.regexcheck import pattern_problem
from schemas.validation import pointer_of
from schemas.walk import escape, json_depth, resolve_pointer, subschemas

MAX_BYTES = 512 * 1024  # the largest real-world schema in jsonschemabench is 457 KB
MAX_DEPTH = 48  # JSON nesting; vLLM refuses more than 64, the deepest benchmark schema is 19
MAX_SUBSCHEMAS = 5000  # the largest benchmark schema has ~4100
MAX_ENUM = 1000
KNOWN_DRAFTS = {uri.rstrip("#") for uri in validators._META_SCHEMAS}  # type: ignore[attr-defined]


def parse_schema_text(text: str) -> Any:
    """JSON text -> value, with size and depth caps before the parser can recurse."""
    if len(text.encode()) > MAX_BYTES:
        raise SchemaError(
            "schema_too_large",
            f"the schema is {len(text.encode())} bytes; the limit is {MAX_BYTES}",
            "",
            "split it, or drop long descriptions the model does not need",
        )
    try:
        return json.loads(text)
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
    error = exceptions.best_match(cls(cls.META_SCHEMA).iter_errors(schema))
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


def check_refs(schema: dict[str, Any]) -> None:
    """Every `$ref` must resolve inside the document; nothing is ever fetched (RELIABILITY A2)."""
    root_id = schema.get("$id") or schema.get("id") or ""
    resource = Resource.from_contents(schema, default_specification=DRAFT202012)
    resolver = Registry().with_resource(root_id, resource).resolver(base_uri=root_id)
    for pointer, node in subschemas(schema):
        ref = node.get("$ref")
        if not isinstance(ref, str):
            continue
        try:
            resolver.lookup(ref)
        except Unresolvable:
            local = ref.startswith("#")
            raise SchemaError(
                "dangling_ref" if local else "external_ref",
                f"$ref {ref!r} does not resolve inside the schema"
                if local
                else f"external $ref {ref!r} not allowed",
                f"{pointer}/$ref",
                "inline the referenced schema under $defs and refer to it as #/$defs/NAME",
            ) from None


# Applicators that apply their subschemas to the same instance location: a `$ref` cycle through only
# these never consumes any of the instance, so validating it recurses forever (RELIABILITY A3).
IN_PLACE = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas")


def _in_place_edges(pointer: str, node: dict[str, Any]) -> list[str]:
    edges = []
    if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#"):
        edges.append(node["$ref"][1:])
    for key in IN_PLACE:
        value = node.get(key)
        if isinstance(value, list):
            edges += [f"{pointer}/{key}/{i}" for i in range(len(value))]
        elif isinstance(value, dict) and key != "dependentSchemas":
            edges.append(f"{pointer}/{key}")
        elif isinstance(value, dict):
            edges += [f"{pointer}/{key}/{escape(k)}" for k in value]
    return edges


def check_ref_cycles(schema: dict[str, Any]) -> None:
    graph = {pointer: _in_place_edges(pointer, node) for pointer, node in subschemas(schema)}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in graph:
        stack = [(start, iter(graph[start]))]
        state.setdefault(start, 1)
        if state[start] == 2:
            continue
        while stack:
            at, edges = stack[-1]
            nxt = next(edges, None)
            if nxt is None:
                state[at] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                loop = " -> ".join([p for p, _ in stack] + [nxt])
                raise SchemaError(
                    "recursive_ref",
                    f"$ref loops back without consuming any input ({loop})",
                    f"{at}/$ref" if "$ref" in _node(schema, at) else at,
                    "make each recursion go through properties or items",
                )
            elif nxt in graph and state.get(nxt) is None:
                state[nxt] = 1
                stack.append((nxt, iter(graph[nxt])))


def _node(schema: dict[str, Any], pointer: str) -> dict[str, Any]:
    try:
        found = resolve_pointer(schema, pointer)
    except (KeyError, IndexError, ValueError, TypeError):
        return {}
    return found if isinstance(found, dict) else {}


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


def check_schema(schema: Any) -> dict[str, Any]:
    """Every static check, in order; returns the schema when it passes."""
    check_caps(schema)
    check_metaschema(schema)
    check_object_root(schema)
    check_refs(schema)
    check_ref_cycles(schema)
    check_patterns(schema)
    return schema
