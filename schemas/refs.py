"""`$ref`s of an untrusted schema: each resolved inside the document, and no in-place cycle.

Resolution uses `referencing` with an empty `Registry()` and no `retrieve`, scoped by embedded `$id`s
exactly as the output validator will resolve them, so nothing is ever fetched (RELIABILITY A2) and a
ref that would be unresolvable when an output is checked is refused at registration instead. A `$ref`
loop through in-place applicators only (`{"$ref": "#"}`, a -> b -> a) is refused (RELIABILITY A3).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012, specification_with

from schemas.errors import SchemaError
from schemas.walk import children, escape, subschemas

REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


def _scoped(node: Any, pointer: str, resolver: Any, spec: Any) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(pointer, subschema, the resolver in scope there): an embedded `$id` moves the base URI, as in
    the validator, so a `$ref` is resolved here exactly as it will be resolved when outputs are checked."""
    if not isinstance(node, dict):
        return
    if pointer:  # a no-op unless the draft's id keyword ($id, or id before draft 6) is here
        resolver = resolver.in_subresource(spec.create_resource(node))
    yield pointer, node, resolver
    for child_pointer, child in children(node, pointer):
        yield from _scoped(child, child_pointer, resolver, spec)


def ref_targets(schema: dict[str, Any]) -> dict[str, str]:
    """{pointer of each ref keyword: pointer of the subschema it resolves to}. Every ref must resolve
    inside the document to a subschema forma walks; nothing is ever fetched (RELIABILITY A2)."""
    spec = specification_with(schema.get("$schema", ""), default=DRAFT202012)
    root_id = spec.id_of(schema) or ""
    resolver = Registry().with_resource(root_id, spec.create_resource(schema)).resolver(base_uri=root_id)
    where = {id(node): pointer for pointer, node in subschemas(schema)}
    targets: dict[str, str] = {}
    for pointer, node, scope in _scoped(schema, "", resolver, spec):
        for keyword in REF_KEYWORDS:
            ref = node.get(keyword)
            if isinstance(ref, str):
                targets[f"{pointer}/{keyword}"] = _target(ref, scope, where, f"{pointer}/{keyword}")
    return targets


def _target(ref: str, scope: Any, where: dict[int, str], at: str) -> str:
    try:
        contents = scope.lookup(ref).contents
    except (Unresolvable, ValueError):  # ValueError: a URI urllib cannot even split, e.g. http://[::1
        local = ref.startswith("#")
        raise SchemaError(
            "dangling_ref" if local else "external_ref",
            f"{at.rsplit('/', 1)[1]} {ref!r} does not resolve inside the schema"
            if local
            else f"external {at.rsplit('/', 1)[1]} {ref!r} not allowed",
            at,
            "inline the referenced schema under $defs and refer to it as #/$defs/NAME",
        ) from None
    if isinstance(contents, bool):
        return ""  # true/false schemas: nothing below them
    if not isinstance(contents, dict) or id(contents) not in where:
        raise SchemaError(
            "dangling_ref",
            f"{ref!r} points at something that is not a subschema forma checks",
            at,
            "move the referenced schema under $defs and refer to it as #/$defs/NAME",
        )
    return where[id(contents)]


# Applicators that apply their subschemas to the same instance location: a `$ref` cycle through only
# these never consumes any of the instance, so validating it recurses forever (RELIABILITY A3).
IN_PLACE = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas")


def _in_place_edges(pointer: str, node: dict[str, Any], targets: dict[str, str]) -> list[str]:
    edges = [targets[f"{pointer}/{k}"] for k in REF_KEYWORDS if f"{pointer}/{k}" in targets]
    for key in IN_PLACE:
        value = node.get(key)
        if isinstance(value, list):
            edges += [f"{pointer}/{key}/{i}" for i in range(len(value))]
        elif isinstance(value, dict) and key != "dependentSchemas":
            edges.append(f"{pointer}/{key}")
        elif isinstance(value, dict):
            edges += [f"{pointer}/{key}/{escape(k)}" for k in value]
    return edges


def check_ref_cycles(schema: dict[str, Any], targets: dict[str, str] | None = None) -> None:
    targets = ref_targets(schema) if targets is None else targets
    graph = {pointer: _in_place_edges(pointer, node, targets) for pointer, node in subschemas(schema)}
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
                loop = " -> ".join([p or "/" for p, _ in stack] + [nxt or "/"])
                ref = next((f"{at}/{k}" for k in REF_KEYWORDS if f"{at}/{k}" in targets), at)
                raise SchemaError(
                    "recursive_ref",
                    f"$ref loops back without consuming any input ({loop})",
                    ref,
                    "make each recursion go through properties or items",
                )
            elif nxt in graph and state.get(nxt) is None:
                state[nxt] = 1
                stack.append((nxt, iter(graph[nxt])))
