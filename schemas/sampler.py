"""Draw valid instances of a JSON Schema, with realistic values where a field's name or format says what
it holds (names, emails, dates...). Used by `forma generate` and by the grammar probes.

A home-made walker rather than hypothesis-jsonschema for the common subset: it is fast, seedable and
draws optional fields and enum values evenly (hypothesis favours minimal, boundary examples, which make
poor training data). Anything it cannot handle raises `Unsampleable`; callers then fall back to
hypothesis-jsonschema (`schemas.fallback`). Every draw is re-validated by the caller.
"""

from __future__ import annotations

import random
from typing import Any

from schemas.canonical import resolve_ref as _resolve
from schemas.formats import FORMAT_CHECKER
from schemas.realistic import realistic_string
from schemas.regexgen import string_matching

Schema = dict[str, Any]
_UNHANDLED = (
    "allOf",
    "not",
    "if",
    "dependentSchemas",
    "dependentRequired",
    "dependencies",
    "patternProperties",
    "propertyNames",
    "uniqueItems",
    "contains",
    "multipleOf",
    "prefixItems",
    "minProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
)


class Unsampleable(Exception):
    """The walker does not handle this schema; use the hypothesis-jsonschema fallback."""


def _types(node: Schema) -> list[str]:
    kind = node.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list) and kind:
        return [k for k in kind if k != "null"] or kind
    if "properties" in node or "required" in node:
        return ["object"]
    if "items" in node:
        return ["array"]
    if "pattern" in node or "format" in node or "minLength" in node:
        return ["string"]
    raise Unsampleable("no type")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {str: "string", list: "array", dict: "object", type(None): "null"}.get(type(value), "?")


def _with_ref_siblings(node: Any, root: Schema) -> Schema:
    """`node` with its `$ref` followed; keywords beside the `$ref` still apply (2019-09 and later),
    so they are merged in: required lists are joined, properties combined."""
    if not isinstance(node, dict) or "$ref" not in node or len(node) == 1:
        return _resolve(node, root)
    return _merge(_resolve({"$ref": node["$ref"]}, root), {k: v for k, v in node.items() if k != "$ref"})


def _merge(base: Schema, extra: Schema) -> Schema:
    """`base` with `extra`'s keywords applied too: required lists joined, properties combined."""
    out = dict(base)
    for key, value in extra.items():
        if key == "required" and isinstance(out.get("required"), list) and isinstance(value, list):
            out["required"] = [*out["required"], *(v for v in value if v not in out["required"])]
        elif key == "properties" and isinstance(out.get("properties"), dict) and isinstance(value, dict):
            out["properties"] = {**out["properties"], **value}
        else:
            out[key] = value
    return out


def _types_or_none(node: Schema) -> list[str]:
    try:
        return _types(node)
    except Unsampleable:
        return []


def hypothesis_value(node: Schema, root: Schema, rng: random.Random) -> Any:
    """One draw from hypothesis-jsonschema for a non-object subschema the walker does not handle.

    Only for leaves: hypothesis-jsonschema 0.23's object strategy breaks on hypothesis 6.170
    ('many' object has no attribute 'more').
    """
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fix_seed
    from hypothesis_jsonschema import from_schema

    defs: Schema = {k: root[k] for k in ("$defs", "definitions") if k in root and k not in node}
    standalone = {**node, **defs}
    drawn: list[Any] = []

    @fix_seed(rng.getrandbits(32))
    @settings(
        max_examples=3,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(from_schema(standalone))
    def collect(value: Any) -> None:
        drawn.append(value)

    try:
        collect()
    except Exception as err:  # hypothesis-jsonschema refuses or cannot satisfy the schema
        raise Unsampleable(f"hypothesis-jsonschema: {err}") from None
    if not drawn:
        raise Unsampleable("hypothesis-jsonschema drew nothing")
    return drawn[-1]


def sample(node: Any, rng: random.Random, root: Schema | None = None, name: str = "", depth: int = 0) -> Any:
    """One instance of `node` (a subschema of `root`); `name` is the property it fills, for realism."""
    root = root if root is not None else node
    if node is True or node == {}:
        return rng.choice(["n/a", 1, True])
    node = _with_ref_siblings(node, root)
    if depth > 12 or not node:
        raise Unsampleable("too deep or empty")
    if any(k in node for k in _UNHANDLED):
        if "object" in _types_or_none(node) or "properties" in node:
            raise Unsampleable("unhandled keyword on an object")
        return hypothesis_value(node, root, rng)
    if "const" in node:
        return node["const"]
    if "enum" in node:
        kinds = _types_or_none(node) if "type" in node else []
        fitting = [
            v
            for v in node["enum"]
            if not kinds or _json_type(v) in kinds or (_json_type(v) == "integer" and "number" in kinds)
        ]
        if not fitting:
            raise Unsampleable("no enum value has the declared type")
        return rng.choice(fitting)
    for key in ("anyOf", "oneOf"):
        if key in node:
            branches = [b for b in node[key] if _resolve(b, root).get("type") != "null"] or node[key]
            rest = {k: v for k, v in node.items() if k != key}
            branch = _with_ref_siblings(rng.choice(branches), root)
            # keywords beside anyOf/oneOf apply as well as the chosen branch
            return sample(_merge(rest, branch) if rest else branch, rng, root, name, depth + 1)
    kind = rng.choice(_types(node))
    return _SAMPLERS[kind](node, rng, root, name, depth)


def _object(node: Schema, rng: random.Random, root: Schema, name: str, depth: int) -> dict[str, Any]:
    required = set(node.get("required", []))
    props = node.get("properties", {}) or {}
    missing = required - set(props)
    if missing and node.get("additionalProperties") is False:
        raise Unsampleable("required property not declared")
    out: dict[str, Any] = {}
    for key, sub in props.items():
        if key in required or rng.random() < 0.6:
            out[key] = sample(sub, rng, root, key, depth + 1)
    extra = node.get("additionalProperties")
    for key in sorted(missing):
        out[key] = sample(extra if isinstance(extra, dict) else {"type": "string"}, rng, root, key, depth + 1)
    max_props = node.get("maxProperties")
    if max_props is not None and len(out) > max_props:
        raise Unsampleable("maxProperties")
    return out


def _array(node: Schema, rng: random.Random, root: Schema, name: str, depth: int) -> list[Any]:
    low = node.get("minItems", 0)
    high = min(node.get("maxItems", low + 3), low + 3)
    items = node.get("items", {})
    if not isinstance(items, dict):
        raise Unsampleable("tuple items")
    return [sample(items, rng, root, name, depth + 1) for _ in range(rng.randint(low, max(low, high)))]


def _string(node: Schema, rng: random.Random, root: Schema, name: str, depth: int) -> str:
    low, high = node.get("minLength", 0), node.get("maxLength", 10_000)
    if "pattern" in node:
        text = string_matching(node["pattern"], rng)
        if text is None or not low <= len(text) <= high:
            raise Unsampleable("pattern")
        if "format" in node and not FORMAT_CHECKER.conforms(text, node["format"]):
            raise Unsampleable("pattern and format disagree")  # e.g. a git@host:x URL under format uri
        return text
    text = realistic_string(name, node.get("format"), rng)
    if len(text) > high:
        text = text[:high]
    if len(text) < low:
        text = text + "x" * (low - len(text))
    return text


def _number(node: Schema, rng: random.Random, root: Schema, name: str, depth: int) -> float | int:
    value = _integer(node, rng, root, name, depth)
    low = node.get("exclusiveMinimum", node.get("minimum"))
    high = node.get("exclusiveMaximum", node.get("maximum"))
    cents = rng.choice([0, 0.5, 0.25, 0.99])
    if (low is None or value + cents < (high if high is not None else value + 1)) and not isinstance(
        low, bool
    ):
        return round(value + cents, 2)
    return value


def _integer(node: Schema, rng: random.Random, root: Schema, name: str, depth: int) -> int:
    low, high = node.get("minimum"), node.get("maximum")
    if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(
        node["exclusiveMinimum"], bool
    ):
        low = int(node["exclusiveMinimum"]) + 1
    if isinstance(node.get("exclusiveMaximum"), (int, float)) and not isinstance(
        node["exclusiveMaximum"], bool
    ):
        high = (
            int(node["exclusiveMaximum"]) - 1
            if node["exclusiveMaximum"] == int(node["exclusiveMaximum"])
            else int(node["exclusiveMaximum"])
        )
    low = int(low) if low is not None else (0 if high is None or high >= 0 else int(high) - 100)
    high = int(high) if high is not None else low + 100
    if low > high:
        raise Unsampleable("empty range")
    return rng.randint(low, high)


_SAMPLERS = {
    "object": _object,
    "array": _array,
    "string": _string,
    "number": _number,
    "integer": _integer,
    "boolean": lambda node, rng, root, name, depth: rng.random() < 0.5,
    "null": lambda node, rng, root, name, depth: None,
}
