"""Which grammar backend vLLM 0.32 uses for a schema, and the relaxed *decoder schema* it can take.

The choice uses vLLM's own functions, in the order of its `auto` mode
(`SamplingParams._validate_structured_outputs`): xgrammar if `validate_xgrammar_grammar` passes, else
llguidance; so what registration accepts, the server accepts. Keywords neither backend implements are
removed from (or, for `oneOf`, approximated in) the copy handed to the decoder, and post-validated.
Runs inside the grammar worker: it imports vLLM.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from schemas.errors import SchemaError
from schemas.report import KeywordReport
from schemas.unsupported import REF_SIBLINGS, strip_keywords, xgrammar_unsupported
from schemas.walk import subschemas

Backend = Literal["xgrammar", "guidance"]


class Unenforceable(Exception):
    """Keywords a backend refuses outright; they are stripped from the decoder's schema and post-validated."""

    def __init__(self, keywords: set[str], why: str, only_value: Any = None, detail: str = "") -> None:
        self.keywords, self.why, self.only_value, self.detail = keywords, why, only_value, detail
        super().__init__(why)


def select_backend(schema: dict[str, Any]) -> tuple[Backend, list[str]]:
    """The backend vLLM's auto mode picks for `schema`, or SchemaError when neither takes it."""
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams
    from vllm.v1.structured_output.backend_guidance import (
        has_guidance_unsupported_json_features,
        validate_guidance_grammar,
    )
    from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar

    params = SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))
    try:
        validate_xgrammar_grammar(params)
        return "xgrammar", []
    except VLLMValidationError as err:
        found = xgrammar_unsupported(schema)
        notes = [f"xgrammar cannot enforce {k} at {p}, so vLLM falls back to llguidance" for p, k in found]
        notes = notes or [f"xgrammar refused the schema ({err}); vLLM falls back to llguidance"]
    if has_guidance_unsupported_json_features(schema):
        raise Unenforceable({"patternProperties"}, "neither xgrammar nor llguidance supports it here")
    try:
        validate_guidance_grammar(params, tokenizer=None)
    except VLLMValidationError as err:
        text = str(err)
        keys = set(re.findall(r'"([A-Za-z$]+)"', text.partition("Unimplemented keys:")[2]))
        if keys:
            raise Unenforceable(keys, "llguidance does not implement it") from None
        if fmt := re.search(r"Unknown format: (.+?)\.?$", text):
            raise Unenforceable({"format"}, "llguidance does not know this format", fmt.group(1)) from None
        if "min/maxProperties only supported" in text:
            raise Unenforceable(
                {"minProperties", "maxProperties"}, "llguidance cannot bound this object"
            ) from None
        if "regex parse error" in text and (bad := unparsable_pattern(schema)):
            raise Unenforceable({"pattern"}, "llguidance cannot parse this regex", bad) from None
        if "circular references with sibling keys" in text:
            why = "llguidance cannot decode a recursive $ref with sibling keys"
            raise Unenforceable({REF_SIBLINGS}, why, detail=text) from None
        if "oneOf constraints are not supported" in text:
            raise Unenforceable({"oneOf"}, "llguidance decodes oneOf as anyOf") from None
        where = re.search(r"#(/[^\s\"',]*)", text)  # llguidance names the subschema as a URI fragment
        raise SchemaError(
            "unsupported_schema",
            f"llguidance refused the schema: {err}",
            where.group(1) if where else "",
            "simplify the keyword it names",
        ) from None
    return "guidance", notes


def unparsable_pattern(schema: dict[str, Any]) -> str | None:
    """The first `pattern` llguidance cannot parse (its error shows a rewritten regex, not ours)."""
    import llguidance

    for _, node in subschemas(schema):
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            grammar = llguidance.LLMatcher.grammar_from_json_schema({"type": "string", "pattern": pattern})
            if llguidance.LLMatcher.validate_grammar(grammar, None):
                return pattern
    return None


def decoder_schema(schema: dict[str, Any]) -> tuple[Backend, dict[str, Any] | None, list[str], list[str]]:
    """(backend, relaxed schema or None, notes, pointers removed) for the constrained decoder.

    Keywords no backend implements are removed from the decoder's copy and post-validated, rather
    than refusing a schema the output validator can fully check.
    """
    relaxed, removed, notes = schema, list[str](), list[str]()
    for _ in range(12):
        try:
            backend, more = select_backend(relaxed)
            return backend, (relaxed if removed else None), notes + more, removed
        except Unenforceable as err:
            relaxed, gone = strip_keywords(relaxed, err.keywords, err.only_value)
            if not gone:  # nothing left to relax: the backend's own words, and where
                where = re.search(r"#(/[^\s\"',]*)", err.detail)
                raise SchemaError(
                    "unsupported_schema" if err.detail else "unsupported_keyword",
                    f"llguidance refused the schema: {err.detail}" if err.detail else err.why,
                    where.group(1) if where else "",
                    "rewrite the part of the schema it names",
                ) from None
            removed += [p for p, _ in gone]
            notes += [
                f"{k} at {p}: {err.why}; relaxed in the decoder's schema, post-validated" for p, k in gone
            ]
    raise SchemaError("unsupported_schema", "no grammar backend accepts the schema", "", "simplify it")


def back_to_one_of(keywords: list[KeywordReport], bases: list[str]) -> list[KeywordReport]:
    """Probes ran on the decoder's schema, where `oneOf` became `anyOf`: name the registered keywords."""
    out = []
    for k in keywords:
        base = next((b for b in bases if k.pointer.startswith(f"{b}/anyOf")), None)
        if base is None:
            out.append(k)
        elif k.pointer != f"{base}/anyOf":  # the combinator itself is reported once, as post-validated
            out.append(k.model_copy(update={"pointer": f"{base}/oneOf" + k.pointer[len(base) + 6 :]}))
    return out
