"""Witnesses for grammar probes: for one keyword of one subschema, an instance that breaks only it.

A witness is accepted only if the validator says it fails that keyword and nothing else, so a probe
never blames the wrong keyword. No witness means "not probed", which the report treats as
post-validated: the decoder is never credited with a constraint nobody saw it enforce.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from typing import Any

from schemas.canonical import resolve_ref
from schemas.sampler import Unsampleable, sample
from schemas.validation import build_validator
from schemas.walk import subschemas

Schema = dict[str, Any]
# Assertion keywords a decoder could enforce or drop. Annotations and applicators whose children are
# probed on their own (properties, items, $defs) are not listed.
CONSTRAINTS = (
    "type",
    "enum",
    "const",
    "required",
    "additionalProperties",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "uniqueItems",
    "contains",
    "minProperties",
    "maxProperties",
    "propertyNames",
    "patternProperties",
    "dependentRequired",
    "dependencies",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "unevaluatedProperties",
)
_ODD = [0, "x", True, None, [], {}, 1.5, "", "zz-unknown", 987654, {"zz": 1}, ["zz"], -1]


def keyword_sites(schema: Schema) -> Iterator[tuple[str, str, Schema]]:
    """(pointer of the keyword, keyword, the subschema holding it) for every constraint in `schema`."""
    for pointer, node in subschemas(schema):
        for keyword in CONSTRAINTS:
            if keyword in node and not _vacuous(node, keyword):
                yield f"{pointer}/{keyword}", keyword, node


def _vacuous(node: Schema, keyword: str) -> bool:
    value = node[keyword]
    return (
        (keyword in ("minLength", "minItems", "minProperties") and value == 0)
        or (keyword in ("additionalProperties", "unevaluatedProperties") and value in (True, {}))
        or (keyword in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool))
        or (keyword == "required" and not value)
        or (keyword == "uniqueItems" and value is False)
    )


def probe_schema(node: Schema, root: Schema) -> Schema | None:
    """`node` standing alone: the root's definitions come along so its local `$ref`s still resolve.

    None when `node` refers elsewhere in the root (e.g. `#/properties/x`): standing alone, such a ref
    would point at a different subschema, so the node cannot be probed in isolation.
    """
    probe = dict(node)
    text = json.dumps(node)
    refs = re.findall(r'"\$ref": "([^"]*)"', text)
    if any(not r.startswith(("#/$defs/", "#/definitions/")) for r in refs):
        return None
    if refs:
        for key in ("$defs", "definitions"):
            if key in root and key not in probe:
                probe[key] = root[key]
    if "$schema" in root:
        probe["$schema"] = root["$schema"]
    return probe


def _validator(schema: Schema) -> Any:
    return build_validator(schema)  # the output validator's own rules, so a witness fails it too


def breaks_only(validator: Any, keyword: str, value: Any) -> bool:
    errors = list(validator.iter_errors(value))
    return bool(errors) and all(e.validator == keyword for e in errors)


def _candidates(node: Schema, keyword: str, base: Any, root: Schema, rng: random.Random) -> list[Any]:
    value = node[keyword]
    if keyword in ("minLength", "maxLength", "pattern", "format"):
        text = base if isinstance(base, str) else ""
        if keyword == "minLength":
            return [text[: value - 1], "a" * (value - 1)]
        if keyword == "maxLength":
            return [text + (text[-1:] or "a") * (value - len(text) + 1), "a" * (value + 1)]
        return ["", "~", "~~~", text + "~", "~" + text, " " + text, "not-a-" + str(value), "2020-13-45"]
    if keyword in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "multipleOf"):
        return _numbers(node, keyword, value, base)
    if keyword in ("minItems", "maxItems", "uniqueItems", "contains"):
        return _arrays(node, keyword, value, base, root, rng)
    if keyword in (
        "required",
        "additionalProperties",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "dependencies",
        "propertyNames",
        "patternProperties",
        "unevaluatedProperties",
    ):
        return _objects(node, keyword, value, base)
    if keyword in ("allOf", "not", "oneOf"):
        # allOf: valid for the first branch only; not: valid for the negated schema; oneOf: a draw from
        # one branch that happens to match another one too
        branches = value[:1] if keyword == "allOf" else value if keyword == "oneOf" else [value]
        return [_try_sample(b, root, rng) for b in branches for _ in range(3)] + _ODD
    return list(_ODD)


def _numbers(node: Schema, keyword: str, value: Any, base: Any) -> list[Any]:
    if keyword == "multipleOf":
        start = base if isinstance(base, (int, float)) and not isinstance(base, bool) else 0
        return [start + 1, start + value / 2, value + 1]
    step = -1 if "Minimum" in keyword or keyword == "minimum" else 1
    edge = value if keyword.startswith("exclusive") else value + step
    return [edge, value + step * 0.5, int(value) + step]


def _arrays(node: Schema, keyword: str, value: Any, base: Any, root: Schema, rng: random.Random) -> list[Any]:
    items = list(base) if isinstance(base, list) else []
    extra = items[-1] if items else _try_sample(node.get("items", {}), root, rng)
    if keyword == "minItems":
        return [items[: value - 1], [extra] * (value - 1)]
    if keyword == "maxItems":
        fresh = [_try_sample(node.get("items", {}), root, rng) for _ in range(value + 1)]
        return [items + [extra] * (value - len(items) + 1), fresh]
    if keyword == "uniqueItems":
        return [[*items, items[0]] if items else [extra, extra]]
    return [[], [extra]]


def _objects(node: Schema, keyword: str, value: Any, base: Any) -> list[Any]:
    obj = dict(base) if isinstance(base, dict) else {}
    if keyword == "required":
        return [{k: v for k, v in obj.items() if k != r} for r in value]
    if keyword == "dependentRequired" or keyword == "dependencies":
        return [
            {k: v for k, v in obj.items() if k not in (deps if isinstance(deps, list) else [])}
            for trigger, deps in value.items()
            if trigger in obj
        ]
    if keyword == "minProperties":
        return [dict(list(obj.items())[: value - 1])]
    return [{**obj, extra: odd} for extra in ("zz_extra", "~~ bad key ~~", "Z") for odd in _ODD[:7]]


def _try_sample(node: Any, root: Schema, rng: random.Random) -> Any:
    try:
        return sample(node, rng, root)
    except (Unsampleable, RecursionError, ValueError, TypeError, KeyError):
        return None


def valid_instance(node: Schema, root: Schema, rng: random.Random, validator: Any, tries: int = 4) -> Any:
    for _ in range(tries):
        value = _try_sample(node, root, rng)
        if value is not None and validator.is_valid(value):
            return value
    return None


def witness(node: Schema, keyword: str, root: Schema, rng: random.Random) -> Any | None:
    """An instance failing `keyword` of `node` and nothing else, as JSON-able data; None if none found."""
    probe = probe_schema(node, root)
    if probe is None:
        return None
    validator = _validator(probe)
    base = valid_instance(node, root, rng, validator)
    for candidate in _candidates(node, keyword, base, root, rng):
        try:
            if breaks_only(validator, keyword, candidate):
                return candidate
        except Exception:  # a candidate can trip the validator itself (e.g. an odd format); try the next
            continue
    return None


__all__ = ["CONSTRAINTS", "keyword_sites", "probe_schema", "resolve_ref", "valid_instance", "witness"]
