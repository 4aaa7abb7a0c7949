"""The training config: one typed record, its YAML files, and `--set key=value` overrides.

Defaults suit the 135M base on a 2-core CPU: a rank-16 LoRA on every linear layer without dropout, a
short cosine schedule, padding-free batches of 8 examples, bf16 autocast where the hardware has it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONFIGS = Path(__file__).parent / "configs"
LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ConfigError(ValueError):
    """A config that cannot be used: names the file or option, the field and the fix."""


class TrainConfig(BaseModel):
    """Everything a training run needs besides its data and base model; recorded in the manifest."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # LoRA
    lora_r: int = Field(16, ge=1, description="LoRA rank: the width of the low-rank update per layer.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (update scaled by alpha/r).")
    # 0 by default: on CPU the dropout masks (7 per layer) measured ~45% of a training step.
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input during training.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LINEAR_MODULES),
        min_length=1,
        description="Module names that get a LoRA adapter (vLLM serves adapters on these Llama projections).",
    )
    use_dora: bool = Field(False, description="DoRA: learn a magnitude vector beside the LoRA direction.")
    use_rslora: bool = Field(
        False, description="rsLoRA: scale the update by alpha/sqrt(r) instead of alpha/r."
    )
    quantization: Literal["none", "4bit"] = Field(
        "none", description="'4bit' trains QLoRA on a 4-bit base; needs a CUDA GPU and bitsandbytes."
    )
    # Optimisation
    learning_rate: float = Field(2e-4, gt=0, description="Peak AdamW learning rate for the LoRA weights.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Learning-rate schedule after warm-up."
    )
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of the steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on the LoRA weights.")
    epochs: float = Field(3.0, gt=0, description="Passes over the train split (ignored when max_steps > 0).")
    max_steps: int = Field(
        -1, description="Stop after this many optimizer steps (-1: run all epochs), as in TRL."
    )
    batch_size: int = Field(8, ge=1, description="Examples per device per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    max_length: int = Field(
        1024, ge=8, description="Longest prompt + completion in tokens; a longer pair is an error."
    )
    seed: int = Field(42, description="Seed for LoRA init, dropout and data order (runs are reproducible).")
    # Speed
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="'auto': bf16 weights + autocast where the CPU/GPU supports bf16, else fp32."
    )
    padding_free: bool = Field(
        True, description="Concatenate a batch into one row with per-example positions: no pad tokens."
    )
    compact_lm_head: bool = Field(
        True, description="Project through the LM head only at positions that carry loss (the JSON tokens)."
    )
    fused_lora: bool = Field(
        True, description="Compute plain LoRA layers as one matmul-only function, not PEFT's per-call casts."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory, about a third more compute."
    )
    num_threads: int | None = Field(
        None, ge=1, description="Torch threads per process; default: the physical cores / local processes."
    )
    # Bookkeeping
    logging_steps: int = Field(1, ge=1, description="Steps between metric lines (JSONL, TensorBoard, bar).")
    save_steps: int = Field(25, ge=1, description="Steps between resumable checkpoints.")
    save_total_limit: int = Field(
        2, ge=2, description="Checkpoints kept (>=2, so one complete always remains)."
    )


def parse_value(raw: str) -> Any:
    """A `--set` value as YAML reads it: `8` is an int, `true` a bool, `[q_proj, v_proj]` a list."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def parse_sets(sets: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set max_steps=20")
        overrides[key.strip()] = parse_value(raw.strip())
    return overrides


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config ({err.strerror})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({err}); fix the syntax") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of field: value, got {type(data).__name__}")
    return data


def _describe(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        field = "/" + "/".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            known = ", ".join(TrainConfig.model_fields)
            lines.append(f"{source}: unknown config key at {field}; known keys: {known}")
        else:
            lines.append(f"{source}: {field}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def load_config(path: Path | None = None, sets: list[str] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then `--set` overrides (each validated, errors name the source)."""
    values = read_yaml(path) if path is not None else {}
    try:
        TrainConfig.model_validate(values)
    except ValidationError as err:
        raise ConfigError(_describe(err, str(path))) from err
    overrides = parse_sets(sets or [])
    try:
        return TrainConfig.model_validate({**values, **overrides})
    except ValidationError as err:
        raise ConfigError(_describe(err, "--set")) from err


def shipped_configs() -> list[Path]:
    return sorted(CONFIGS.glob("*.yaml"))
