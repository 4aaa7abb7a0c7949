"""Walk a JSON Schema's subschemas with their JSON pointers (schema keywords only, not data)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Keywords whose value is one subschema, a list of them, or a name -> subschema map (2020-12 and older).
ONE = (
    "additionalProperties",
    "unevaluatedProperties",
    "propertyNames",
    "contains",
    "additionalItems",
    "unevaluatedItems",
    "not",
    "if",
    "then",
    "else",
    "contentSchema",
    "items",
)
MANY = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies")


def escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def children(node: dict[str, Any], pointer: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(pointer, subschema) for each object subschema directly below `node`."""
    for key in ONE:
        if isinstance(node.get(key), dict):
            yield f"{pointer}/{key}", node[key]
    for key in MANY:
        if isinstance(node.get(key), list):
            for i, sub in enumerate(node[key]):
                if isinstance(sub, dict):
                    yield f"{pointer}/{key}/{i}", sub
    for key in MAP:
        if isinstance(node.get(key), dict):
            for name, sub in node[key].items():
                if isinstance(sub, dict):
                    yield f"{pointer}/{key}/{escape(name)}", sub


def subschemas(node: Any, pointer: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (pointer, subschema) for `node` and every subschema below it, depth first."""
    if not isinstance(node, dict):
        return
    yield pointer, node
    for child_pointer, child in children(node, pointer):
        yield from subschemas(child, child_pointer)


def resolve_pointer(doc: Any, pointer: str) -> Any:
    """The value at a JSON pointer ('' is the document); KeyError/IndexError if absent."""
    node = doc
    for raw in pointer.split("/")[1:] if pointer else []:
        token = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def json_depth(value: Any) -> int:
    """Nesting depth of a JSON document, iteratively (a 3000-deep bomb must not hit RecursionError)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest
