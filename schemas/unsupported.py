"""Where in a schema xgrammar's unsupported features sit, with JSON pointers.

vLLM's `has_xgrammar_unsupported_json_features` answers only yes or no; this mirrors its rules
(vllm/v1/structured_output/backend_xgrammar.py, vLLM 0.32) keyword by keyword so the registration
report can name each one. The yes/no decision itself is always vLLM's.
"""

from __future__ import annotations

from typing import Any

from schemas.walk import subschemas

STRING_FORMATS = {
    "email",
    "date",
    "time",
    "date-time",
    "duration",
    "ipv4",
    "ipv6",
    "hostname",
    "uuid",
    "uri",
    "uri-reference",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
}


REF_SIBLINGS = "$ref siblings"  # pseudo-keyword: every keyword beside a `$ref`
ANNOTATIONS = {
    "description",
    "title",
    "$comment",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$id",
    "id",
    "$schema",
    "markdownDescription",
}


def _types(node: dict[str, Any]) -> set[str]:
    kind = node.get("type")
    return (
        {kind}
        if isinstance(kind, str)
        else {k for k in kind if isinstance(k, str)}
        if isinstance(kind, list)
        else set()
    )


def _length_with_pattern(node: Any) -> bool:
    return (
        isinstance(node, dict)
        and ("pattern" in node or "format" in node)
        and ("minLength" in node or "maxLength" in node)
    )


def _node_findings(node: dict[str, Any]) -> list[str]:
    kinds, found = _types(node), []
    if kinds & {"integer", "number"} and "multipleOf" in node:
        found.append("multipleOf")
    if "array" in kinds:
        found += [k for k in ("uniqueItems", "contains", "minContains", "maxContains") if k in node]
    if "string" in kinds and "format" in node and node["format"] not in STRING_FORMATS:
        found.append("format")
    if "string" in kinds and _length_with_pattern(node):
        found += [k for k in ("minLength", "maxLength") if k in node]
    if (
        "object" in kinds
        and "propertyNames" in node
        and (
            _length_with_pattern(node["propertyNames"])
            or {"patternProperties", "properties"} & set(node)
            or (node.get("unevaluatedProperties", True) is not True)
        )
    ):
        found.append("propertyNames")
    if "object" in kinds and isinstance(node.get("patternProperties"), dict):
        if "properties" in node or len(node["patternProperties"]) > 1:
            found.append("patternProperties")
    elif "patternProperties" in node:
        found.append("patternProperties")
    if isinstance(node.get("allOf"), list) and len(node["allOf"]) >= 2:
        found.append("allOf")
    return found


def xgrammar_unsupported(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """(pointer, keyword) for each feature vLLM's xgrammar check refuses."""
    return [(f"{pointer}/{k}", k) for pointer, node in subschemas(schema) for k in _node_findings(node)]


def strip_keywords(
    schema: dict[str, Any], keywords: set[str], only_value: Any = None
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A copy of `schema` without `keywords` in any subschema (only where the keyword's value is
    `only_value`, if given), and the (pointer, keyword) pairs removed.

    The decoder gets this relaxed schema; the output validator still checks the full one. `oneOf` is
    not removed but turned into `anyOf` (llguidance's own `coerce_one_of` approximation).
    """
    import copy

    relaxed = copy.deepcopy(schema)
    removed = []
    for pointer, node in list(subschemas(relaxed)):
        if REF_SIBLINGS in keywords and "$ref" in node:
            for keyword in [k for k in node if k != "$ref"]:
                node.pop(keyword)
                if keyword not in ANNOTATIONS:  # dropping a description changes nothing worth reporting
                    removed.append((f"{pointer}/{keyword}", keyword))
        for keyword in sorted(keywords & set(node)):
            if (
                (keyword == "patternProperties" and not isinstance(node[keyword], dict))
                or (only_value is not None and node[keyword] != only_value)
                or (keyword == "oneOf" and "anyOf" in node)
            ):
                continue
            value = node.pop(keyword)
            if keyword == "oneOf":
                node["anyOf"] = value
            removed.append((f"{pointer}/{keyword}", keyword))
    return relaxed, removed
