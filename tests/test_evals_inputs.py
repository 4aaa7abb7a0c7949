"""Checks that run before any model: golden files, prompt-hash skew, engine arguments, the CLI surface,
and the reports rendered from a hand-made eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evals.engines import AdapterRef, GenerationRequest, rank_cap
from evals.engines.vllm_engine import sampling_kwargs
from evals.evaluate import Contender, plan, score_records
from evals.inputs import EvalError, SchemaRef, check_prompt_hash, golden_pairs
from evals.records import GenerationRecord
from finetune.run import BaseModelRef, DatasetRef, RunManifest
from forma.cli import app
from schemas.prompt import prompt_hash

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "kind": {"enum": ["a", "b"]}},
    "required": ["name", "kind"],
    "additionalProperties": False,
}
runner = CliRunner()


def manifest(**changes) -> RunManifest:
    fields = {
        "run_id": "r1",
        "status": "completed",
        "schema_name": "thing",
        "schema_version": "abc",
        "dataset": DatasetRef(sha256="d", counts={"train": 1}),
        "base_model": BaseModelRef(id="m", path="/m", content_sha256="s"),
        "prompt_hash": prompt_hash(),
        "config": {},
        "created_at": "now",
    }
    return RunManifest(**(fields | changes))


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "golden.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_golden_file_pairs_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"input": "x", "output": {"name": "n", "kind": "a"}}',
        "",
        '{"input": "y", "output": {"name": "m", "kind": "b"}}',
    )
    assert golden_pairs(path, SCHEMA) == [
        ("x", {"name": "n", "kind": "a"}),
        ("y", {"name": "m", "kind": "b"}),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"golden\.jsonl:2: not valid JSON"),
        ('{"input": "x"}', r"golden\.jsonl:2: expected exactly the keys input and output"),
        ('{"input": "", "output": {}}', r"golden\.jsonl:2: /input must be a non-empty string"),
        (
            '{"input": "x", "output": {"name": "n", "kind": "z"}}',
            r"golden\.jsonl:2: /output/kind breaks the schema",
        ),
        (
            '{"input": "x", "output": {"name": "n"}}',
            r"golden\.jsonl:2: /output breaks the schema: 'kind' is a required",
        ),
    ],
)
def test_bad_golden_line_names_file_line_and_pointer(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, '{"input": "ok", "output": {"name": "n", "kind": "a"}}', line)
    with pytest.raises(EvalError, match=message):
        golden_pairs(path, SCHEMA)


def test_prompt_hash_skew_is_refused() -> None:
    check_prompt_hash(manifest())
    with pytest.raises(EvalError, match=r"trained with prompt format 0000.*Retrain"):
        check_prompt_hash(manifest(prompt_hash="0000"))


def test_vllm_arguments_and_rank_cap(tmp_path: Path) -> None:
    request = GenerationRequest([{"role": "user", "content": "x"}], SCHEMA, None, 32)
    assert sampling_kwargs(request) == {
        "temperature": 0.0,
        "max_tokens": 32,
        "structured_outputs": {"json": SCHEMA},
    }
    assert "structured_outputs" not in sampling_kwargs(GenerationRequest([], None, None, 8))
    for name, config in {"a": {"r": 8}, "b": {"r": 12, "rank_pattern": {"q_proj": 20}}}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps(config))
    assert rank_cap([AdapterRef("a", tmp_path / "a")]) == 8
    assert rank_cap([AdapterRef("a", tmp_path / "a"), AdapterRef("b", tmp_path / "b")]) == 32


def test_plan_covers_every_contender_mode_and_pair() -> None:
    ref = SchemaRef("thing", "abc", SCHEMA)
    contenders = [
        Contender("candidate", AdapterRef("thing-1", Path("/a")), ref),
        Contender("base", None, ref, with_schema=True),
    ]
    planned = plan(contenders, [("t1", {}), ("t2", {})], 16)
    assert len(planned) == 2 * 2 * 2
    keys = {(r.model, r.mode, r.pair) for r, _ in planned}
    assert len(keys) == 8
    base_unconstrained = next(q for r, q in planned if r.model == "base" and r.mode == "unconstrained")
    assert base_unconstrained.schema is None and "JSON Schema" in base_unconstrained.messages[0]["content"]
    tuned = next(q for r, q in planned if r.model == "candidate" and r.mode == "constrained")
    assert tuned.schema == SCHEMA and "JSON Schema" not in tuned.messages[0]["content"]


def test_reports_render_from_records_and_escape_input(tmp_path: Path) -> None:
    from evals.evaluate import EvalReport
    from evals.records import write_generations
    from evals.reports import write_reports

    def rec(model: str, mode: str, text: str) -> GenerationRecord:
        return GenerationRecord(
            model=model,
            mode=mode,
            pair=0,
            input="<script>x</script>",
            expected={"name": "n", "kind": "a"},
            adapter=None,
            text=text,
            finish_reason="stop",
            tokens=5,
            latency_s=0.5,
        )

    records = [
        rec("candidate", "constrained", '{"name":"n","kind":"b"}'),
        rec("candidate", "unconstrained", "nope"),
        rec("base", "constrained", '{"name":"n","kind":"a"}'),
        rec("base", "unconstrained", "{}"),
    ]
    write_generations(tmp_path, records)
    metrics, pairs = score_records(records, SCHEMA)
    report = EvalReport(
        run_id="r1",
        schema_name="thing",
        schema_version="abc",
        source="split test",
        engine="vllm",
        n_pairs=1,
        max_tokens=16,
        adapters={"candidate": "thing-1", "base": None},
        metrics=metrics,
        pairs=pairs,
        created_at="now",
    )
    write_reports(tmp_path, report)
    html = (tmp_path / "eval.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "differs at: /kind" in html
    md = (tmp_path / "eval.md").read_text()
    assert "| a | 0 | 1 |" in md  # enum confusion: expected a, predicted b
    assert (
        json.loads((tmp_path / "eval.json").read_text())["metrics"]["base"]["constrained"]["exact_match"]
        == 1.0
    )


def test_releases_cli_lists_and_refuses_rollback_without_history() -> None:
    result = runner.invoke(app, ["releases", "thing"])
    assert result.exit_code == 0 and "no releases yet" in result.output
    result = runner.invoke(app, ["releases", "rollback", "thing"])
    assert result.exit_code == 1 and "no earlier release" in result.output


def test_eval_and_gate_refuse_an_unknown_run() -> None:
    for verb in ("eval", "gate"):
        result = runner.invoke(app, [verb, "nope"])
        assert result.exit_code == 1 and "no run 'nope'" in result.output
    result = runner.invoke(app, ["eval", "nope", "--engine", "tgi"])
    assert result.exit_code == 1 and "choose vllm or hf" in result.output
