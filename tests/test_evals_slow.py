"""Eval, gate and ledger on the real tiny model: register the support_ticket example, train a few steps,
evaluate with real vLLM (and the transformers engine), and recompute the report from generations.jsonl.

One vLLM engine is started for the whole module (it takes ~30 s on 2 cores); eval sets are tiny.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from typer.testing import CliRunner

from evals import ledger
from evals.engines import AdapterRef, GenerationRequest
from evals.inputs import EvalError
from evals.pipeline import EvalPaths, evaluate_run
from evals.records import read_generations
from evals.releasing import gate_run, promote_run
from finetune.run import RunError, file_sha256, load_manifest, write_manifest
from forma.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()
NAME = "support_ticket"
PAIRS = 4  # pairs per eval: enough to exercise every metric, few enough for 2 cores


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evals") / "home"


@pytest.fixture(scope="module")
def paths(home: Path) -> EvalPaths:
    return EvalPaths(registry=home / "schemas", runs=home / "runs", releases=home / "releases")


@pytest.fixture(scope="module")
def cli(home: Path, base_model: Path):
    """The real CLI on this module's forma home and the shared model cache."""
    env = {"FORMA_HOME": str(home), "FORMA_MODEL_CACHE": str(base_model.parent)}
    return lambda *args: runner.invoke(app, list(args), env=env)


@pytest.fixture(scope="module")
def trained_run(cli, paths: EvalPaths, base_model: Path) -> str:
    """The bundled support_ticket example, registered through the CLI and trained for one real step."""
    from finetune.base_model import prepare_model
    from finetune.config import TrainConfig
    from finetune.registered import load_training_data
    from finetune.train import train_run

    result = cli("register", NAME, "--example")
    assert result.exit_code == 0, result.output
    data = load_training_data(paths.registry, NAME)
    data = dataclasses.replace(data, train=data.train[:4], val=data.val[:1])
    config = TrainConfig(
        max_steps=1, batch_size=2, lora_r=8, lora_alpha=16, save_steps=100, learning_rate=1e-3
    )
    return train_run(data, prepare_model(base_model.parent), config, paths.runs, progress=False).run_id


@pytest.fixture(scope="module")
def vllm_engine(base_model: Path):
    from evals.engines.vllm_engine import VllmEngine

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    engine = VllmEngine(base_model, max_lora_rank=8)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def evaluated(paths: EvalPaths, trained_run: str, vllm_engine) -> Path:
    folder, _ = evaluate_run(paths, trained_run, engine=vllm_engine, max_tokens=96, limit=PAIRS)
    return folder


def random_adapter_run(paths: EvalPaths, source_run: str, base_model: Path, seed: int) -> str:
    """A second real run: a fresh PEFT LoRA with random non-zero B (it really changes outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    manifest = load_manifest(paths.runs / source_run)
    run_id = f"{source_run}-r{seed}"
    folder = paths.runs / run_id
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    peft.save_pretrained(folder / "adapter")
    sha = file_sha256(folder / "adapter" / "adapter_model.safetensors")
    write_manifest(folder, manifest.model_copy(update={"run_id": run_id, "adapter_sha256": sha}))
    return run_id


def recompute(folder: Path, schema: dict) -> dict:
    """valid rate and micro F1 per (model, mode) straight from generations.jsonl, written independently of
    evals.metrics: support_ticket is flat, so a leaf is a top-level (key, value)."""
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    totals: dict[tuple[str, str], list[int]] = {}
    for line in (folder / "generations.jsonl").read_text().splitlines():
        g = json.loads(line)
        counts = totals.setdefault((g["model"], g["mode"]), [0, 0, 0, 0, 0, 0])  # n, valid, tp, fp, fn, exact
        counts[0] += 1
        try:
            value = json.loads(g["text"]) if g["finish_reason"] != "length" else None
        except ValueError:
            value = None
        ok = value is not None and validator.is_valid(value)
        gold = set(g["expected"].items())
        got = set(value.items()) if ok else set()
        counts[1] += ok
        counts[2] += len(gold & got)
        counts[3] += len(got - gold)
        counts[4] += len(gold - got)
        counts[5] += ok and value == g["expected"]
    out = {}
    for key, (n, valid, tp, fp, fn, exact) in totals.items():
        empty = 1.0 if tp + fp + fn == 0 else 0.0
        p = tp / (tp + fp) if tp + fp else empty
        r = tp / (tp + fn) if tp + fn else empty
        out[key] = (valid / n, 2 * p * r / (p + r) if p + r else 0.0, exact / n)
    return out


def test_report_matches_recomputation_from_generations(evaluated: Path, paths: EvalPaths) -> None:
    report = json.loads((evaluated / "eval.json").read_text())
    schema = json.loads(next((paths.registry / NAME / "versions").glob("*/schema.json")).read_text())
    expected = recompute(evaluated, schema)
    assert set(expected) == {
        (m, mode) for m in ("candidate", "base") for mode in ("constrained", "unconstrained")
    }
    for (model, mode), (valid_rate, f1, exact) in expected.items():
        found = report["metrics"][model][mode]
        assert found["n"] == PAIRS
        assert found["valid_rate"] == pytest.approx(valid_rate)
        assert found["f1"] == pytest.approx(f1)
        assert found["exact_match"] == pytest.approx(exact)
    # Constrained decoding never yields schema-breaking JSON unless it was cut off at max_tokens.
    for g in read_generations(evaluated):
        if g.mode == "constrained" and g.finish_reason != "length":
            assert Draft202012Validator(schema, format_checker=FormatChecker()).is_valid(json.loads(g.text))
    html = (evaluated / "eval.html").read_text()
    assert "<svg" in html and "Per-field accuracy" in html and "/category" in html
    assert "src=" not in html and "<link" not in html  # self-contained
    assert "| candidate | constrained |" in (evaluated / "eval.md").read_text()
    # a generation that ended at max_tokens is never counted as valid
    for pair in report["pairs"]["base"]["unconstrained"]:
        assert not (pair["truncated"] and pair["valid"])


def test_both_engines_constrain_and_report_truncation(
    evaluated: Path, trained_run: str, paths, base_model, vllm_engine
):
    from evals.engines.hf_engine import HfEngine

    schema = json.loads(next((paths.registry / NAME / "versions").glob("*/schema.json")).read_text())
    adapter = AdapterRef(
        ledger.release_id(NAME, load_manifest(evaluated).adapter_sha256 or ""), evaluated / "adapter"
    )
    messages = [
        {"role": "system", "content": "Triage the ticket as JSON."},
        {"role": "user", "content": "My card was charged twice!"},
    ]
    requests = [
        GenerationRequest(messages, schema, adapter, 96),
        GenerationRequest(messages, schema, None, 96),
        GenerationRequest(messages, None, None, 3),
    ]
    hf = HfEngine(base_model)
    try:
        for engine in (vllm_engine, hf):
            tuned, base, cut = engine.generate(requests)
            for g in (tuned, base):
                if g.finish_reason == "stop":
                    assert Draft202012Validator(schema).is_valid(json.loads(g.text)), (engine.name, g)
            assert cut.finish_reason == "length" and cut.tokens == 3
            assert tuned.latency_s > 0 and tuned.tokens > 0
    finally:
        hf.close()


def test_gate_promote_refusal_force_and_rollback(
    evaluated: Path, trained_run: str, paths, cli, base_model, vllm_engine
) -> None:
    folder, verdict = gate_run(paths, str(evaluated))  # a folder path works wherever RUN is taken
    assert (folder / "gate.json").is_file()
    assert not verdict.passed  # 4 test pairs are below the default minimum test size of 20
    assert not next(r for r in verdict.rules if r.rule == "test size").passed
    result = cli("gate", trained_run)
    assert result.exit_code == 1 and "FAIL  test size" in result.output

    with pytest.raises(ledger.LedgerError, match="failed its gate"):
        promote_run(paths, trained_run)
    result = cli("releases", "promote", trained_run, "--force")
    assert result.exit_code == 1 and "--reason" in result.output
    result = cli("releases", "promote", trained_run, "--force", "--reason", "smoke release")
    assert result.exit_code == 0, result.output
    first = ledger.live_release(paths.releases, NAME)
    assert first is not None and first.reason == "smoke release" and first.forced

    # A second run is evaluated against the live one (three contenders), then promoted and rolled back.
    second = random_adapter_run(paths, trained_run, base_model, seed=3)
    _, report = evaluate_run(paths, second, engine=vllm_engine, max_tokens=64, limit=2)
    assert set(report.metrics) == {"candidate", "base", "live"}
    assert report.adapters["live"] == first.release_id
    gate_run(paths, second)
    promote_run(paths, second, force=True, reason="second")
    assert ledger.live_release(paths.releases, NAME).run_id == second
    listing = cli("releases", NAME)
    assert listing.exit_code == 0 and first.release_id in listing.output and "smoke release" in listing.output
    result = cli("releases", "rollback", NAME)
    assert result.exit_code == 0, result.output
    assert ledger.live_release(paths.releases, NAME).run_id == trained_run
    assert [e.event for e in ledger.read_events(paths.releases, NAME)] == ["promote", "promote", "rollback"]


def clone_run(paths: EvalPaths, run: str, suffix: str, **changes) -> Path:
    folder = paths.runs / f"{run}-{suffix}"
    shutil.copytree(paths.runs / run, folder, ignore=shutil.ignore_patterns("checkpoints", "tb"))
    manifest = load_manifest(folder)
    write_manifest(folder, manifest.model_copy(update={"run_id": folder.name, **changes}))
    return folder


def test_refusals_happen_before_the_engine_starts(trained_run: str, paths: EvalPaths) -> None:
    skewed = clone_run(paths, trained_run, "skew", prompt_hash="0123456789abcdef")
    with pytest.raises(EvalError, match="prompt format 0123456789abcdef"):
        evaluate_run(paths, str(skewed), engine="vllm")
    missing = clone_run(paths, trained_run, "gone", schema_version="ffffffffffff")
    with pytest.raises(EvalError, match="ffffffffffff is not in the registry"):
        evaluate_run(paths, missing.name, engine="vllm")
    corrupt = clone_run(paths, trained_run, "corrupt")
    weights = corrupt / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(RunError, match="corrupted"):
        evaluate_run(paths, corrupt.name, engine="hf")
