"""Field-level comparison of two JSON values: leaves addressed by JSON pointer.

A leaf is a scalar (string, number, bool, null) at a JSON pointer. Arrays of scalars compare as
multisets (order does not matter, duplicates do); arrays of objects are aligned by best match first, so
a predicted item is compared with the expected item it most resembles, not with whatever shares its
index. Each leaf carries its field path (the pointer with array positions as `*`), which per-field
accuracy groups by.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from itertools import permutations
from typing import Any

Leaf = tuple[str, str]  # (JSON pointer, canonical JSON of the value)
MAX_EXACT_ALIGN = 7  # up to 7! orderings are tried exactly; longer arrays are aligned greedily


def escape(key: str) -> str:
    """A key as a JSON pointer token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def value_key(value: Any) -> str:
    """Canonical JSON of a scalar, so 1 and 1.0 and true stay distinct and comparable."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def field_path(pointer: str) -> str:
    """The schema field a leaf belongs to: array positions replaced by `*`."""
    return "/".join("*" if part.isdigit() else part for part in pointer.split("/"))


def _is_object_array(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(item, dict) for item in value)


def _leaves(value: Any, pointer: str = "") -> Counter[Leaf]:
    """Leaves of one value; arrays of scalars get `*` positions (a multiset), objects in arrays get indices."""
    out: Counter[Leaf] = Counter()
    if isinstance(value, dict):
        for key, sub in value.items():
            out.update(_leaves(sub, f"{pointer}/{escape(key)}"))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            position = str(index) if _is_object_array(value) else "*"
            out.update(_leaves(item, f"{pointer}/{position}"))
    else:
        out[(pointer or "/", value_key(value))] += 1
    return out


def _overlap(expected: Any, predicted: Any) -> int:
    return sum((_leaves(expected) & _leaves(predicted)).values())


def align(expected: list[Any], predicted: list[Any]) -> list[int | None]:
    """For each predicted item, the index of the expected item it is compared with (None: unmatched).

    Best match maximises the total number of shared leaves; exact for short arrays, greedy beyond.
    """
    if not expected or not predicted:
        return [None] * len(predicted)
    scores = [[_overlap(e, p) for e in expected] for p in predicted]
    size = max(len(expected), len(predicted))
    if size <= MAX_EXACT_ALIGN:
        slots = list(range(len(expected))) + [None] * (size - len(expected))
        best = max(
            permutations(slots, len(predicted)),
            key=lambda order: sum(scores[i][j] for i, j in enumerate(order) if j is not None),
        )
        return list(best)
    taken: set[int] = set()
    result: list[int | None] = []
    for row in scores:
        free = [j for j in range(len(expected)) if j not in taken]
        pick = max(free, key=lambda j: row[j]) if free else None
        if pick is not None:
            taken.add(pick)
        result.append(pick)
    return result


@dataclass(frozen=True)
class LeafMatch:
    """True positives, false positives and false negatives, as leaf multisets."""

    tp: Counter[Leaf]
    fp: Counter[Leaf]
    fn: Counter[Leaf]


def match_leaves(expected: Any, predicted: Any | None) -> LeafMatch:
    """Compare leaves; a missing prediction (None: invalid or unparsable output) has no leaves."""
    gold = _leaves(expected)
    if predicted is None:
        return LeafMatch(tp=Counter(), fp=Counter(), fn=gold)
    guess = _leaves(_align_positions(expected, predicted))
    both = gold & guess
    return LeafMatch(tp=both, fp=guess - both, fn=gold - both)


def _align_positions(expected: Any, predicted: Any) -> Any:
    """Like `aligned`, but unmatched expected slots keep their index, so later items are not shifted."""
    if isinstance(expected, dict) and isinstance(predicted, dict):
        return {k: _align_positions(expected.get(k), v) for k, v in predicted.items()}
    if isinstance(expected, list) and isinstance(predicted, list) and _is_object_array(expected):
        order = align(expected, predicted)
        placed: list[Any] = [{} for _ in expected]
        extras = [item for item, slot in zip(predicted, order, strict=True) if slot is None]
        for item, slot in zip(predicted, order, strict=True):
            if slot is not None:
                placed[slot] = _align_positions(expected[slot], item)
        return placed + extras
    return predicted


def _resolve(node: Any, root: dict[str, Any]) -> Any:
    """Follow a local `#/...` reference (bounded, so a recursive schema cannot loop)."""
    for _ in range(32):
        ref = node.get("$ref") if isinstance(node, dict) else None
        if not (isinstance(ref, str) and ref.startswith("#")):
            break
        target: Any = root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part, {}) if isinstance(target, dict) else {}
        node = target
    return node if isinstance(node, dict) else {}


def enum_fields(schema: dict[str, Any]) -> set[str]:
    """Field paths (as `field_path` writes them) whose values the schema restricts to an `enum`."""
    found: set[str] = set()

    def walk(node: Any, path: str, depth: int) -> None:
        node = _resolve(node, schema)
        if depth > 16 or not node:
            return
        if "enum" in node:
            found.add(path or "/")
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}/{escape(name)}", depth + 1)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}/*", depth + 1)
        for key in ("allOf", "anyOf", "oneOf"):
            for branch in node.get(key) or []:
                walk(branch, path, depth + 1)

    walk(schema, "", 0)
    return found
