"""Canonical JSON: the exact text a model is trained to emit and the hash input for versions.

Compact (no spaces), non-ASCII kept as is (fewer tokens), object keys in the order the schema declares
its properties, so train targets never depend on how a user happened to order keys in a pair.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

Schema = dict[str, Any]


def canonical_schema_json(schema: Schema) -> str:
    """Key-sorted compact JSON of a schema: the same schema always gives the same text and hash."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def schema_hash(schema: Schema) -> str:
    return hashlib.sha256(canonical_schema_json(schema).encode()).hexdigest()


def resolve_ref(node: Any, root: Schema, depth: int = 0) -> Schema:
    """Follow local `#/...` refs (bounded: recursive schemas stop resolving rather than loop)."""
    while (
        isinstance(node, dict)
        and isinstance(node.get("$ref"), str)
        and node["$ref"].startswith("#")
        and depth < 32
    ):
        target: Any = root
        for part in node["$ref"][1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part, {}) if isinstance(target, dict) else {}
        node, depth = target, depth + 1
    return node if isinstance(node, dict) else {}


_resolve = resolve_ref  # the older private name


def _properties(node: Schema, root: Schema) -> dict[str, Any]:
    """Declared properties of an object schema, including those of allOf/anyOf/oneOf branches, in order."""
    node = resolve_ref(node, root)
    props: dict[str, Any] = dict(node.get("properties", {}) or {})
    for key in ("allOf", "anyOf", "oneOf"):
        for branch in node.get(key, []) or []:
            for name, sub in _properties(branch, root).items():
                props.setdefault(name, sub)
    return props


def _items(node: Schema, root: Schema) -> Any:
    node = resolve_ref(node, root)
    items = node.get("items", {})
    return items if isinstance(items, dict) else {}


def order_like_schema(value: Any, schema: Schema, root: Schema | None = None) -> Any:
    """`value` with every object's keys in the schema's declared order (undeclared keys after, as given)."""
    root = schema if root is None else root
    if isinstance(value, dict):
        props = _properties(schema, root)
        keys = [k for k in props if k in value] + [k for k in value if k not in props]
        return {k: order_like_schema(value[k], props.get(k, {}), root) for k in keys}
    if isinstance(value, list):
        items = _items(schema, root)
        return [order_like_schema(v, items, root) for v in value]
    return value


def canonical_output(value: Any, schema: Schema) -> str:
    """The assistant text for a pair: compact JSON in schema property order."""
    ordered = order_like_schema(value, schema)
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False)
