"""RELIABILITY A1-A4, the static half: an untrusted schema is refused with its code and JSON pointer
before any grammar compile, nothing is stored and nothing is fetched; bombs cost milliseconds; a
catastrophic pattern is refused, and one the static check misses is matched under a time bound.

"The grammar worker was never asked" is shown on the real `GrammarWorker`: it starts its process on
the first compile, so `worker.process is None` afterwards means no compile was requested.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rel_registry import JSON_VALUES, OBJECT_SCHEMAS, SCHEMA_LIKE, Sentinel, cpu_and_wall, snapshot
from typer.testing import CliRunner

from forma.cli import app
from schemas.checks import check_schema, parse_schema_text
from schemas.errors import SchemaError
from schemas.regexcheck import pattern_problem
from schemas.register import register
from schemas.validation import output_errors
from schemas.worker import GrammarWorker

REPO = Path(__file__).resolve().parents[2]
OBJ: dict[str, Any] = {"type": "object", "properties": {"name": {"type": "string"}}}


@pytest.fixture
def idle_worker(base_model: Path):
    """A real grammar worker, never started unless the registry asks it to compile something."""
    worker = GrammarWorker(base_model)
    yield worker
    worker.close()


def refused(root: Path, schema: Any, worker: GrammarWorker) -> SchemaError:
    """Register `schema`; it must be refused with nothing stored and no compile requested."""
    before = snapshot(root)
    with pytest.raises(SchemaError) as caught:
        register(root, "untrusted", schema, check=worker.check)
    assert snapshot(root) == before
    assert worker.process is None, "a refused schema reached the grammar worker"
    return caught.value


def flat(text: str) -> str:
    """CLI output without whitespace: rich wraps long lines at the terminal width."""
    return "".join(text.split())


# ---- A1: invalid schemas --------------------------------------------------------------------------

A1_CASES = [
    ({"properties": {"name": {"type": "str"}}}, "invalid_schema", "/properties/name/type"),
    ([], "not_an_object_schema", ""),
    (42, "not_an_object_schema", ""),
    ("", "not_an_object_schema", ""),
    (False, "not_an_object_schema", ""),
    (True, "not_an_object_schema", ""),
    ({**OBJ, "$schema": "http://example.com/my-draft"}, "unknown_draft", "/$schema"),
    ({**OBJ, "$schema": "https://json-schema.org/draft/2099-01/schema"}, "unknown_draft", "/$schema"),
    ({**OBJ, "$schema": "urn:forma:draft"}, "unknown_draft", "/$schema"),
    ({**OBJ, "$schema": 7}, "unknown_draft", "/$schema"),
    ({**OBJ, "properties": {"n": {"type": "number", "minimum": float("nan")}}}, "invalid_json", ""),
]


@pytest.mark.parametrize(("schema", "code", "pointer"), A1_CASES)
def test_a1_invalid_schema_is_refused_with_code_and_pointer_and_nothing_stored(
    schema: Any, code: str, pointer: str, tmp_path: Path, idle_worker: GrammarWorker
) -> None:
    """A1: each invalid input is refused with a stable code, the JSON pointer and a fix; nothing stored."""
    root = tmp_path / "schemas"
    error = refused(root, schema, idle_worker)
    assert (error.code, error.pointer) == (code, pointer)
    assert str(error).startswith(f"[{code}] at {pointer or '/'}:") and "Fix:" in str(error)
    assert not root.exists()


@pytest.mark.parametrize(
    ("text", "code", "pointer"),
    [
        ('{"type": ', "invalid_json", None),
        ("[]", "not_an_object_schema", ""),
        ("42", "not_an_object_schema", ""),
        ('""', "not_an_object_schema", ""),
        ("false", "not_an_object_schema", ""),
        ("true", "not_an_object_schema", ""),
        ('{"properties": {"name": {"type": "str"}}}', "invalid_schema", "/properties/name/type"),
        ('{"type": "object", "$schema": "http://example.com/x"}', "unknown_draft", "/$schema"),
        ('{"type": "object", "minimum": NaN}', "invalid_json", None),
    ],
)
def test_a1_cli_refuses_invalid_schema_file_with_exit_1_and_stores_nothing(
    text: str, code: str, pointer: str | None, tmp_path: Path, forma_home: Path
) -> None:
    """A1 through `forma register`: exit status 1, the file, the code and the pointer; nothing stored."""
    path = tmp_path / "schema.json"
    path.write_text(text)
    result = CliRunner().invoke(app, ["register", "untrusted", "--schema", str(path)])
    assert result.exit_code == 1, result.output
    where = "" if pointer is None else f"at{pointer or '/'}"
    assert flat(f"error: {path}: [{code}]{where}") in flat(result.output)
    if text == '{"type": ':  # the truncated file: the error says where it ends
        assert "line 1, column 10" in result.output
    assert snapshot(forma_home / "schemas") == {}


def only_schema_errors(check: Callable[[], Any]) -> None:
    try:
        check()
    except SchemaError as err:  # anything else escaping is the failure this property looks for
        assert err.code and err.message and "Fix:" in str(err)
        assert err.pointer is not None or err.code == "invalid_json"  # JSON syntax: line and column instead


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON_VALUES | SCHEMA_LIKE | OBJECT_SCHEMAS)
def test_a1_property_static_checks_raise_only_schema_error(value: Any) -> None:
    """A1 (jsonschema's fuzz_validate pattern): whatever JSON comes in, the checks registration runs
    before the compile (value and text doors) accept it or raise SchemaError, never anything else.
    The full registration, compile included, is fuzzed on the real worker in test_rel_grammar."""
    only_schema_errors(lambda: check_schema(value))
    only_schema_errors(lambda: check_schema(parse_schema_text(json.dumps(value))))


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=40) | st.text(alphabet='{}[]":,0123456789.-eEtrufalsn \\', max_size=40))
def test_a1_property_any_text_parses_or_raises_schema_error(text: str) -> None:
    """A1: arbitrary text through the file door parses or is refused as SchemaError."""
    only_schema_errors(lambda: check_schema(parse_schema_text(text)))


# ---- A2: external $ref ----------------------------------------------------------------------------


def test_a2_external_refs_are_refused_and_the_sentinel_sees_no_request(
    tmp_path: Path, idle_worker: GrammarWorker
) -> None:
    """A2: external $ref, $dynamicRef, relative refs against a remote $id and remote $schema are all
    refused before any compile; the output validator, handed such a schema anyway, fetches nothing."""
    with Sentinel() as sentinel:
        remote = [
            "http://169.254.169.254/latest/meta-data",
            f"{sentinel.url}/x",
            "file:///etc/passwd",
            "urn:foo",
        ]
        cases: list[tuple[dict[str, Any], str, str]] = [
            ({**OBJ, "properties": {"a": {"$ref": ref}}}, "external_ref", "/properties/a/$ref")
            for ref in remote
        ]
        cases += [
            ({**OBJ, "$id": f"{sentinel.url}/root.json", "properties": {"a": {"$ref": "b.json"}}}, "external_ref",
             "/properties/a/$ref"),
            ({**OBJ, "properties": {"a": {"$id": f"{sentinel.url}/sub/", "$ref": "b.json"}}}, "external_ref",
             "/properties/a/$ref"),
            ({**OBJ, "properties": {"a": {"$dynamicRef": f"{sentinel.url}/d"}}}, "external_ref",
             "/properties/a/$dynamicRef"),
            ({**OBJ, "$schema": f"{sentinel.url}/meta"}, "unknown_draft", "/$schema"),
        ]  # fmt: skip
        for schema, code, pointer in cases:
            error = refused(tmp_path / "schemas", schema, idle_worker)
            assert (error.code, error.pointer) == (code, pointer), schema
            assert code != "external_ref" or "not allowed" in error.message
        for schema, _, _ in cases[1:2] + cases[4:7]:  # straight to the validator: unresolvable, not fetched
            with pytest.raises(Exception, match=r"Unresolvable|NoSuchResource|does not exist"):
                output_errors(schema, {"a": "x"})
    assert sentinel.hits == []


VALIDATOR_FACTORIES = {"validator_for", "extend", "create", "_bounded"}


def _validator_constructions(tree: ast.AST) -> tuple[list[ast.Call], list[ast.Call]]:
    """(calls that build a jsonschema validator, calls that build one without a registry or fetch)."""
    built_from = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
        for target in node.targets
        if isinstance(target, ast.Name) and _callee(node.value) in VALIDATOR_FACTORIES
    }
    builds, bad = [], []
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        name, keywords = _callee(call), {k.arg for k in call.keywords}
        if re.fullmatch(r"Draft\d+Validator", name) or name in built_from:
            builds.append(call)
            if "registry" not in keywords:
                bad.append(call)
        if name in ("validate", "check_schema") and isinstance(call.func, ast.Attribute):
            owner = call.func.value
            if isinstance(owner, ast.Name) and (owner.id == "jsonschema" or owner.id in built_from):
                bad.append(call)  # jsonschema.validate / Cls.check_schema build a default-registry validator
        if name == "Registry" and "retrieve" in keywords:
            bad.append(call)
    return builds, bad


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def test_a2_every_validator_in_forma_is_built_with_an_explicit_registry() -> None:
    """A2, static: every jsonschema validator forma's packages build passes `registry=` (an explicit
    `referencing.Registry`), none uses `jsonschema.validate`/`check_schema` (default registry), and no
    Registry is given a `retrieve` function. Tests' own oracles are out of scope."""
    builds, offenders = [], []
    for package in ("schemas", "serve", "evals", "finetune", "forma"):
        for path in sorted((REPO / package).rglob("*.py")):
            found, bad = _validator_constructions(ast.parse(path.read_text(encoding="utf-8")))
            builds += found
            offenders += [f"{path.relative_to(REPO)}:{call.lineno}" for call in bad]
    assert offenders == []
    assert len(builds) >= 2  # the scan sees the real constructions (output validator, metaschema check)
    planted = "cls = validators.validator_for(s)\ncls(s)\nDraft7Validator(s)\njsonschema.validate(v, s)\n"
    planted += "Registry(retrieve=fetch)\nDraft7Validator(s, registry=Registry())\n"
    assert len(_validator_constructions(ast.parse(planted))[1]) == 4  # the scan would catch each of them


# ---- A3: recursion, depth and size bombs ----------------------------------------------------------


def _deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        node = {"type": "object", "properties": {"x": node}}
    return node


A3_BOMBS: dict[str, tuple[Callable[[], Any], str, str]] = {
    "ref_to_root": (lambda: {"$ref": "#"}, "recursive_ref", "/$ref"),
    "a_b_a": (
        lambda: {
            **OBJ,
            "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}},
            "properties": {"p": {"$ref": "#/$defs/a"}},
        },
        "recursive_ref",
        "/$defs/b/allOf/0/$ref",
    ),
    "nesting_3000": (lambda: _deep(3000), "schema_too_deep", ""),
    "five_mb": (lambda: {"type": "object", "description": "x" * 5_000_000}, "schema_too_large", ""),
    "properties_100k": (
        lambda: {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(100_000)}},
        "schema_too_large",
        "",
    ),
    "enum_1e6": (
        lambda: {"type": "object", "properties": {"a": {"enum": list(range(1_000_000))}}},
        "enum_too_large",
        "/properties/a/enum",
    ),
    "pattern_a100_100_100": (
        lambda: {"type": "object", "properties": {"a": {"type": "string", "pattern": "a{100}{100}{100}"}}},
        "bad_pattern",
        "/properties/a/pattern",
    ),
}


def _as_text(case: str, schema: Any) -> str:
    if case == "nesting_3000":  # json.dumps itself would recurse too deep: write it out
        return '{"type": "object", "properties": {"x": ' * 3000 + "{}" + "}}" * 3000
    return json.dumps(schema)


@pytest.mark.parametrize("door", ["value", "text"])
@pytest.mark.parametrize("case", list(A3_BOMBS))
def test_a3_bomb_is_refused_by_static_caps_before_any_compile(
    case: str, door: str, tmp_path: Path, idle_worker: GrammarWorker
) -> None:
    """A3: each bomb is refused by a static cap (never a RecursionError), in well under 2 s of CPU,
    and the grammar worker is never asked. The text door is what `forma register --schema` reads;
    there the byte cap answers first for the big ones."""
    build, code, pointer = A3_BOMBS[case]
    schema = build()
    text = _as_text(case, schema) if door == "text" else ""
    if door == "text" and len(text) > 512 * 1024:
        code, pointer = "schema_too_large", ""
    with cpu_and_wall() as cost:
        try:
            error = refused(tmp_path / "schemas", parse_schema_text(text) if text else schema, idle_worker)
        except SchemaError as err:  # the parser's own cap (size, depth) refused the text
            error = err
    print(
        f"A3 {case} ({door}): refused {error.code} in {cost['wall'] * 1000:.0f} ms, {cost['cpu'] * 1000:.0f} ms CPU"
    )
    assert (error.code, error.pointer) == (code, pointer)
    assert cost["cpu"] < 2.0
    assert idle_worker.process is None


# ---- A4: catastrophic patterns --------------------------------------------------------------------

CATASTROPHIC = [
    r"^(a+)+$",
    r"(a|aa)*$",
    r"(a|a?)*$",
    r"^(a*)*b$",
    r"((a+)+)+",
    r"^(\w+\s?)+$",
    r"^(\d+|\d+\.\d+)*$",
]


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_a4_catastrophic_pattern_is_refused_statically_wherever_it_sits(
    pattern: str, tmp_path: Path, idle_worker: GrammarWorker
) -> None:
    """A4: nested unbounded quantifiers are refused at registration, in `pattern`, as a
    `patternProperties` key and in `propertyNames`, with the pointer; no compile is requested."""
    places = [
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": pattern}}}, "/properties/a/pattern"),
        ({"type": "object", "patternProperties": {pattern: {"type": "string"}}},
         "/patternProperties/" + pattern.replace("~", "~0").replace("/", "~1")),
        ({"type": "object", "propertyNames": {"pattern": pattern}}, "/propertyNames/pattern"),
    ]  # fmt: skip
    for schema, pointer in places:
        error = refused(tmp_path / "schemas", schema, idle_worker)
        assert (error.code, error.pointer) == ("bad_pattern", pointer)
        assert "catastrophic" in error.message


SLIPS_THROUGH = r"^(.*?,){20}P"  # polynomial backtracking: a bounded repeat the static check accepts
ATTACK = "1," * 40


def test_a4_python_re_would_hang_on_a_pattern_the_static_check_accepts() -> None:
    """A4 premise: the static check is incomplete, so matching must be bounded. `re` (what jsonschema
    uses) does not finish this match within 3 s; it runs in a child process so it can be killed."""
    assert pattern_problem(SLIPS_THROUGH) is None
    code = f"import re; re.search({SLIPS_THROUGH!r}, {ATTACK!r})"
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", code], timeout=3)


@pytest.mark.parametrize(
    ("schema", "value", "pointer"),
    [
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": SLIPS_THROUGH}}}, {"a": ATTACK}, "/a"),
        ({"type": "object", "patternProperties": {SLIPS_THROUGH: {"type": "integer"}}}, {ATTACK: 1}, ""),
        ({"type": "object", "patternProperties": {SLIPS_THROUGH: {}}, "additionalProperties": False},
         {ATTACK: 1}, ""),
        ({"type": "object", "propertyNames": {"pattern": SLIPS_THROUGH}}, {ATTACK: 1}, ""),
    ],
)  # fmt: skip
def test_a4_output_validation_matches_patterns_under_a_time_bound(
    schema: dict[str, Any], value: Any, pointer: str
) -> None:
    """A4: the output validator (what the gateway runs on every answer) matches such a pattern with a
    bound: the answer is refused at its pointer within the budget, never passed unchecked, and the
    same pattern still matches ordinary values."""
    with cpu_and_wall() as cost:
        errors = output_errors(schema, value)
    print(f"A4 bounded match: {cost['wall'] * 1000:.0f} ms, {cost['cpu'] * 1000:.0f} ms CPU")
    assert errors and errors[0].pointer == pointer
    assert "could not be matched" in errors[0].message
    assert cost["cpu"] < 2.0  # the budget is CPU time (0.25 s): a busy machine stretches the wall time
    key_or_text = "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,P"
    ok = {"a": key_or_text} if "properties" in schema else {key_or_text: 1}
    assert output_errors(schema, ok) == []
