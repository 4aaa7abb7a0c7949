"""A real TRL run on the tiny model: the run folder, the manifest, the adapter, and the speed paths' correctness."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from finetune.base_model import ModelInfo, content_sha256, prepare_model
from finetune.config import TrainConfig
from finetune.data import DataError, from_pairs
from finetune.run import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_run, verified_adapter
from finetune.train import RunResult, train_run
from schemas.prompt import prompt_hash
from tests.conftest import SHARED_MODEL_CACHE
from tests.test_finetune_helpers import SCHEMA, person_data, person_pairs

pytestmark = pytest.mark.slow
# One thread: on a shared 2-core machine it is the fast, stable choice, and runs stay bit-reproducible.
CONFIG = TrainConfig(max_steps=3, batch_size=4, save_steps=2, lora_r=8, lora_alpha=16, num_threads=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunResult]:
    runs = tmp_path_factory.mktemp("runs")
    return runs, train_run(person_data(), prepare_model(SHARED_MODEL_CACHE), CONFIG, runs, progress=False)


def test_run_folder_layout(trained: tuple[Path, RunResult]) -> None:
    runs, result = trained
    assert result.folder == runs / result.run_id
    assert {p.name for p in result.folder.iterdir()} == {
        "manifest.json",
        "adapter",
        "metrics.jsonl",
        "data_order.jsonl",
        "tb",
        "checkpoints",
    }
    assert {p.name for p in (result.folder / "adapter").iterdir()} == {ADAPTER_WEIGHTS, ADAPTER_CONFIG}
    assert any(
        p.name.startswith("events.out.tfevents") and p.stat().st_size > 0
        for p in (result.folder / "tb").iterdir()
    )
    checkpoints = sorted((result.folder / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and all((c / "forma-complete.json").is_file() for c in checkpoints)


def test_run_id_format(trained: tuple[Path, RunResult]) -> None:
    import re

    assert re.fullmatch(r"person-\d{8}T\d{6}-[0-9a-f]{6}", trained[1].run_id)


def test_manifest_records_inputs_and_outputs(trained: tuple[Path, RunResult]) -> None:
    runs, result = trained
    folder, manifest = load_run(runs, result.run_id)
    assert manifest == result.manifest and manifest.status == "completed"
    verified_adapter(folder, manifest)  # raises unless the adapter matches the recorded sha256
    data = person_data()
    assert manifest.schema_name == "person" and manifest.schema_version == data.schema_version
    assert manifest.dataset.sha256 == data.dataset_sha256 and manifest.dataset.counts == {
        "train": 12,
        "val": 2,
    }
    assert manifest.prompt_hash == prompt_hash()
    assert manifest.config == CONFIG.model_dump(mode="json")
    assert manifest.base_model.id == "SmolLM2-135M-Instruct"
    assert math.isfinite(manifest.metrics["eval_loss"]) and math.isfinite(manifest.metrics["train_loss"])
    assert manifest.metrics["global_step"] == 3 and manifest.metrics["train_tokens"] > 0
    assert manifest.tokens_per_s and manifest.tokens_per_s > 0 and manifest.wall_s and manifest.peak_memory_mb
    assert {"torch", "transformers", "trl", "peft"} <= set(manifest.versions)
    assert manifest.hardware["precision"] in {"bf16", "fp32"} and manifest.hardware["torch_threads"] >= 1


def test_metrics_jsonl_has_loss_tokens_per_s_and_val_loss(trained: tuple[Path, RunResult]) -> None:
    lines = [json.loads(line) for line in (trained[1].folder / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    assert [line["step"] for line in steps] == [1, 2, 3]
    assert all(line["tokens_per_s"] >= 0 and math.isfinite(line["loss"]) for line in steps)
    assert any("eval_loss" in line for line in lines)


def test_adapter_holds_trained_lora_weights_only(trained: tuple[Path, RunResult]) -> None:
    from safetensors.torch import load_file

    adapter = trained[1].folder / "adapter"
    weights = load_file(adapter / ADAPTER_WEIGHTS)
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)
    # LoRA B starts at zero: a non-zero B in every layer means every adapter matrix was trained.
    assert all(w.abs().sum() > 0 for k, w in weights.items() if ".lora_B." in k)
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert set(config["target_modules"]) == set(CONFIG.target_modules)


def test_adapter_loads_with_peft_and_base_is_unchanged(trained: tuple[Path, RunResult]) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    manifest = trained[1].manifest
    base_path = Path(manifest.base_model.path)
    assert content_sha256(base_path) == manifest.base_model.content_sha256
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_path), trained[1].folder / "adapter"
    )
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[1, 2, 3]]))
    assert torch.isfinite(out.logits).all()


def test_bad_input_stops_before_any_run_folder(tmp_path: Path, base_model: Path) -> None:
    base = prepare_model(SHARED_MODEL_CACHE)
    pairs = person_pairs()
    with pytest.raises(DataError, match="the prompt alone is"):
        train_run(from_pairs("person", SCHEMA, pairs), base, TrainConfig(max_length=16), tmp_path)
    with pytest.raises(DataError, match="no train pairs"):
        train_run(from_pairs("person", SCHEMA, [], pairs), base, TrainConfig(), tmp_path)
    no_template = tmp_path / "no-template"
    no_template.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        (no_template / name).write_bytes((base_model / name).read_bytes())
    plain = ModelInfo.model_validate({**base.model_dump(), "id": "plain", "path": str(no_template)})
    with pytest.raises(DataError, match="has no chat template"):
        train_run(from_pairs("person", SCHEMA, pairs), plain, TrainConfig(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-template"]
