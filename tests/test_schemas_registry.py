"""The registry end to end on the real grammar worker (vLLM's backend choice, xgrammar, llguidance):
versions, strict pairs, the registration report, locks, the examples and the CLI (issue #3)."""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from forma.cli import app
from schemas.dataset import load_dataset
from schemas.errors import SchemaError
from schemas.register import StrictFailure, register
from schemas.registry import list_schemas, load_schema, read_index
from schemas.report import GrammarReport
from schemas.validation import output_errors
from schemas.versions import diff_schemas
from schemas.worker import GrammarWorker

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[1] / "schemas" / "examples"
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "priority": {"enum": ["low", "high"]}},
    "required": ["name", "priority"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def worker(base_model: Path):
    with GrammarWorker(base_model) as grammar:
        yield grammar


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".locks" not in p.parts
    }


def rows(n: int, bad_line: int | None = None) -> str:
    out = []
    for i in range(1, n + 1):
        priority = "urgent" if i == bad_line else "low"
        out.append(
            json.dumps({"input": f"{i}: hi from P{i}", "output": {"name": f"P{i}", "priority": priority}})
        )
    return "\n".join(out) + "\n"


def test_versions_noop_new_version_and_diff(worker: GrammarWorker, tmp_path: Path) -> None:
    root = tmp_path / "schemas"
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(rows(30))
    first = register(root, "demo", SCHEMA, check=worker.check, pairs=[pairs], instructions="Extract it.")
    assert first.changed and first.added == 30 and first.version == load_schema(root, "demo").version
    before = snapshot(root)
    again = register(
        root,
        "demo",
        json.loads(json.dumps(SCHEMA)),
        check=worker.check,
        pairs=[pairs],
        instructions="Extract it.",
    )
    assert (again.changed, again.added, again.version) == (False, 0, first.version)
    assert snapshot(root) == before
    assert {i.kind for i in again.issues} == {"duplicate"}
    changed = {**SCHEMA, "properties": {**SCHEMA["properties"], "priority": {"enum": ["low", "high", "mid"]}}}
    second = register(root, "demo", changed, check=worker.check)
    assert second.version != first.version
    assert load_schema(root, "demo").version == second.version
    old = load_schema(root, "demo", first.version[:6])
    assert old.json_schema == old.schema == SCHEMA and old.instructions == "Extract it."
    assert diff_schemas(old.json_schema, changed) == [
        '~ /properties/priority/enum: ["low", "high"] -> ["low", "high", "mid"]'
    ]
    assert load_dataset(root, "demo").manifest.schema_version == second.version
    assert [i.name for i in list_schemas(root)] == ["demo"]
    assert [v.version for v in read_index(root, "demo").versions] == [first.version, second.version]


def test_strict_with_a_bad_pair_at_line_37_writes_nothing(worker: GrammarWorker, tmp_path: Path) -> None:
    root = tmp_path / "schemas"
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(rows(10))
    register(root, "demo", SCHEMA, check=worker.check, pairs=[good])
    before = snapshot(root)
    conflict = json.dumps({"input": "1: hi from P1", "output": {"name": "Someone else", "priority": "low"}})
    bad.write_text(rows(40, bad_line=37) + conflict + "\n")
    with pytest.raises(StrictFailure) as caught:
        register(root, "demo", SCHEMA, check=worker.check, pairs=[bad], strict=True)
    assert [i.render() for i in caught.value.issues] == [
        f"{bad}:37: invalid /output/priority: 'urgent' is not one of ['low', 'high']",
        f"{bad}:41: conflict /input: same input as good.jsonl:1 with a different output; keep one of them",
    ]
    assert snapshot(root) == before
    lenient = register(root, "demo", SCHEMA, check=worker.check, pairs=[bad])
    assert lenient.added == 29 and [i.line for i in lenient.issues if i.kind == "invalid"] == [37]
    assert [i.line for i in lenient.issues if i.kind == "conflict"] == [41]
    assert load_dataset(root, "demo").pairs[0].output == {
        "name": "P1",
        "priority": "low",
    }  # the stored one stays


def test_report_marks_dropped_keywords_post_validated(worker: GrammarWorker, tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "answer": {"allOf": [{"type": "string"}, {"enum": ["yes", "no"]}]},
            "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
        },
        "required": ["code"],
    }
    outcome = register(tmp_path, "flags", schema, check=worker.check)
    modes = {k.pointer: k.enforcement for k in outcome.report.grammar.keywords}
    assert modes["/properties/tags/uniqueItems"] == "post-validated"
    assert modes["/properties/answer/allOf"] == "post-validated"
    assert modes["/properties/code/pattern"] == "decoder"
    assert modes["/required"] == "decoder"
    stored = load_schema(tmp_path, "flags")
    assert "uniqueItems" not in json.dumps(stored.decoder_schema) and stored.json_schema == schema
    assert {k.pointer for k in stored.post_validated} >= {
        "/properties/tags/uniqueItems",
        "/properties/answer/allOf",
    }
    assert output_errors(schema, {"code": "ABC", "tags": ["a", "a"]})[0].pointer == "/tags"
    assert "post-validated /properties/tags/uniqueItems" in " ".join(outcome.report.render().split())


def test_pattern_with_maxlength_goes_to_llguidance_like_vllm(worker: GrammarWorker) -> None:
    schema = {
        "type": "object",
        "properties": {"id": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 3}},
    }
    report = worker.check(schema)
    assert report.backend == "guidance"
    assert any("maxLength at /properties/id/maxLength" in note for note in report.notes)
    assert {k.pointer: k.enforcement for k in report.keywords}["/properties/id/maxLength"] == "decoder"


def test_compile_past_the_time_bound_is_killed_and_refused(base_model: Path) -> None:
    # ~6 s to compile here (a 1000..50000 range took only 1-2 s: too close to the 1 s bound on a fast machine).
    slow = {
        "type": "object",
        "properties": {"a": {"type": "string", "minLength": 20000, "maxLength": 400000}},
    }
    with GrammarWorker(base_model, timeout=1.0) as grammar:
        grammar.check({"type": "object"})
        zygote = grammar.process.pid
        with pytest.raises(SchemaError) as caught:
            grammar.check(slow)
        assert caught.value.code == "schema_too_complex"
        # the compiling child was killed and reaped; the zygote lives on, so no restart is paid
        assert psutil.Process(zygote).children(recursive=True) == []
        later = grammar.check({"type": "object", "properties": {"b": {"type": "integer"}}})
        assert later.backend == "xgrammar" and grammar.process.pid == zygote


def _fixed(report: dict, schema: dict) -> GrammarReport:
    """The check result the parent computed for real, handed to the racing processes."""
    return GrammarReport.model_validate(report)


def _race(root: str, schema: dict, report: dict, pairs: str) -> str:
    outcome = register(
        Path(root), "race", schema, check=functools.partial(_fixed, report), pairs=[Path(pairs)]
    )
    return outcome.version


def test_concurrent_registers_leave_a_consistent_registry(worker: GrammarWorker, tmp_path: Path) -> None:
    variants = [{**SCHEMA, "title": f"v{i}"} for i in range(4)]
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(rows(50))
    jobs = [(str(tmp_path), s, worker.check(s).model_dump(), str(pairs)) for s in variants]
    with mp.get_context("spawn").Pool(4) as pool:
        versions = pool.starmap(_race, jobs)
    index = read_index(tmp_path, "race")
    assert sorted(v.version for v in index.versions) == sorted(versions)
    assert index.current in versions
    for version in versions:
        assert load_schema(tmp_path, "race", version).json_schema in variants
    dataset = load_dataset(tmp_path, "race")
    assert len(dataset.pairs) == 50 and len({p.id for p in dataset.pairs}) == 50
    assert not list(tmp_path.glob("race/**/*.tmp"))


@pytest.mark.parametrize("name", ["support_ticket", "billing_codes", "invoice", "contact"])
def test_examples_register_cleanly(worker: GrammarWorker, tmp_path: Path, name: str) -> None:
    folder = EXAMPLES / name
    outcome = register(
        tmp_path,
        name,
        json.loads((folder / "schema.json").read_text()),
        check=worker.check,
        pairs=[folder / "pairs.jsonl"],
        instructions=(folder / "instructions.md").read_text(),
        templates=folder / "templates",
        strict=True,
    )
    assert outcome.issues == [] and outcome.added >= 300
    assert outcome.manifest is not None and min(outcome.manifest.counts.values()) >= 20
    assert sorted(p.name for p in (tmp_path / name / "templates").iterdir()) == sorted(
        p.name for p in (folder / "templates").iterdir()
    )


def outcome_version(home: Path) -> str:
    return read_index(home / "schemas", "contact").current


def test_cli_register_list_show_generate_diff(tmp_path: Path, forma_home: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["register", "contact", "--example"])
    assert result.exit_code == 0, result.output
    assert "contact" in result.output and "320 pair(s) added" in result.output
    assert "decoder" in result.output
    listed = runner.invoke(app, ["schemas", "list"])
    assert listed.exit_code == 0 and listed.output.split()[:3] == [
        "contact",
        outcome_version(forma_home),
        "1",
    ]
    shown = runner.invoke(app, ["schemas", "show", "contact"])
    assert shown.exit_code == 0 and '"first_name"' in shown.output
    generated = runner.invoke(app, ["generate", "contact", "--n", "30", "--seed", "5"])
    assert generated.exit_code == 0, generated.output
    dataset = load_dataset(forma_home / "schemas", "contact")
    assert sum(p.synthetic for p in dataset.pairs) == 30 and dataset.manifest.synthetic == 30
    schema_file = tmp_path / "s.json"
    changed = json.loads((EXAMPLES / "contact" / "schema.json").read_text())
    changed["properties"]["phone"]["maxLength"] = 25
    schema_file.write_text(json.dumps(changed))
    assert runner.invoke(app, ["register", "contact", "--schema", str(schema_file)]).exit_code == 0
    first = read_index(forma_home / "schemas", "contact").versions[0].version
    diffed = runner.invoke(app, ["schemas", "diff", "contact", first])
    assert diffed.exit_code == 0 and "~ /properties/phone/maxLength: 30 -> 25" in diffed.output
    missing = runner.invoke(app, ["schemas", "show", "nobody"])
    assert missing.exit_code == 1 and "no schema named 'nobody'" in missing.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "object", "properties": {"name": {"type": "str"}}}')
    refused = runner.invoke(app, ["register", "other", "--schema", str(bad)])
    assert refused.exit_code == 1 and "[invalid_schema] at /properties/name/type" in refused.output
    assert not (forma_home / "schemas" / "other").exists()


def test_one_of_and_untyped_pattern_are_probed_not_assumed(worker: GrammarWorker) -> None:
    """RELIABILITY A6: a keyword the decoder would drop is reported, and the validator catches it."""
    schema = {
        "type": "object",
        "properties": {
            "num": {"oneOf": [{"type": "integer"}, {"type": "number"}]},
            "code": {"pattern": "^[a-z]+$", "maxLength": 3},
        },
    }
    report = worker.check(schema)
    modes = {k.pointer: k.enforcement for k in report.keywords}
    assert report.backend == "xgrammar"
    assert modes["/properties/num/oneOf"] == "post-validated"  # xgrammar decodes oneOf as anyOf
    assert {"/properties/code/pattern", "/properties/code/maxLength"} <= set(modes)
    assert sorted(e.pointer for e in output_errors(schema, {"num": 3, "code": "abcd"})) == ["/code", "/num"]


BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "jsonschemabench" / "schemas"


@pytest.mark.skipif(not BENCH.exists(), reason="jsonschemabench sample not present")
def test_schema_no_backend_can_decode_is_refused_with_pointer(worker: GrammarWorker, tmp_path: Path) -> None:
    schema = json.loads((BENCH / "WashingtonPost__wp_0_Normalized.json").read_text())
    with pytest.raises(SchemaError) as caught:
        register(tmp_path, "wapo", schema, check=worker.check)
    assert (caught.value.code, caught.value.pointer) == (
        "unsupported_schema",
        "/definitions/utils_author_json",
    )
    assert "circular references with sibling keys" in caught.value.message
    assert not (tmp_path / "wapo").exists()
