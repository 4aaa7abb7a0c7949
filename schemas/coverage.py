"""Coverage of a dataset: for each enum value and each optional field, how many pairs exercise it.

A field the test split never exercises is a blind spot of the eval, so the manifest warns about it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.canonical import resolve_ref as _resolve

Schema = dict[str, Any]


class CoverageEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="Data path, e.g. /priority or /line_items/*/currency.")
    kind: str = Field(description="enum (one entry per value) or optional (the field is present).")
    value: Any = None
    counts: dict[str, int] = Field(description="Pairs per split that exercise it.")


def _targets(node: Any, root: Schema, path: str, depth: int = 0) -> Iterator[tuple[str, str, Any]]:
    """(data path, kind, value) for each enum value and optional property reachable from `node`."""
    node = _resolve(node, root)
    if depth > 8:
        return
    for value in node.get("enum", []) or []:
        yield path, "enum", value
    required = set(node.get("required", []) or [])
    for name, sub in (node.get("properties") or {}).items():
        if name not in required:
            yield f"{path}/{name}", "optional", None
        yield from _targets(sub, root, f"{path}/{name}", depth + 1)
    items = node.get("items")
    if isinstance(items, dict):
        yield from _targets(items, root, f"{path}/*", depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in node.get(key, []) or []:
            yield from _targets(branch, root, path, depth + 1)


def _values_at(value: Any, parts: list[str]) -> Iterator[Any]:
    if not parts:
        yield value
        return
    head, rest = parts[0], parts[1:]
    if head == "*" and isinstance(value, list):
        for item in value:
            yield from _values_at(item, rest)
    elif isinstance(value, dict) and head in value:
        yield from _values_at(value[head], rest)


def _exercises(output: Any, path: str, kind: str, wanted: Any) -> bool:
    found = list(_values_at(output, [p for p in path.split("/") if p]))
    return bool(found) if kind == "optional" else any(v == wanted for v in found)


def coverage_of(schema: Schema, outputs: list[tuple[Any, str]]) -> list[CoverageEntry]:
    entries = []
    seen: set[str] = set()
    for path, kind, value in _targets(schema, schema, ""):
        key = f"{path}|{kind}|{value!r}"
        if key in seen:
            continue
        seen.add(key)
        counts = {"train": 0, "val": 0, "test": 0}
        for output, split in outputs:
            counts[split] += _exercises(output, path, kind, value)
        entries.append(CoverageEntry(field=path or "/", kind=kind, value=value, counts=counts))
    return entries
