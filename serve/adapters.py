"""Adapter pre-validation: what the engine is asked to load was checked in Python first (RELIABILITY C3, C4).

`finetune.run.verified_adapter` already refused pickles, extra files, links, size bombs and lying
safetensors headers. Here the config and the tensor table are checked against what this server serves:
a plain LoRA (no DoRA, biases or extra saved modules) of rank <= --max-lora-rank, trained on this base,
on modules the base has, with shapes that fit them. Nothing here reads a tensor, only headers.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from finetune.run import ADAPTER_CONFIG, ADAPTER_WEIGHTS, safetensors_header

MAX_CONFIG_BYTES = 64 << 10
# Keys whose value is checked below, or that do not change what the loaded adapter computes.
CHECKED = {"peft_type", "r", "lora_alpha", "target_modules", "bias", "base_model_name_or_path", "task_type"}
HARMLESS = {
    "peft_version",
    "revision",
    "inference_mode",
    "init_lora_weights",
    "lora_dropout",
    "use_rslora",
    "megatron_core",
    "qalora_group_size",
}
LORA_TENSOR = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<side>[AB])\.weight$")


class AdapterConfigError(ValueError):
    """An adapter the engine must not be asked to load, with the field and the fix."""


def check_adapter(adapter: Path, base: Path | None, base_id: str, max_rank: int) -> None:
    """Refuse an adapter whose config or tensors this server cannot serve as a plain LoRA of `base`."""
    config = read_config(adapter / ADAPTER_CONFIG)
    rank = check_config(config, max_rank)
    named = str(config.get("base_model_name_or_path") or "")
    if named and Path(named).name != (base.name if base else base_id):
        raise AdapterConfigError(
            f"{ADAPTER_CONFIG}: /base_model_name_or_path is {Path(named).name!r}, but this server serves "
            f"{base.name if base else base_id!r}; train the adapter on the served base"
        )
    weights = adapter / ADAPTER_WEIGHTS
    tensors = safetensors_header(weights, weights.stat().st_size)
    modules = base_modules(str(base)) if base is not None else None
    check_tensors(tensors, rank, set(config["target_modules"]), modules)


def read_config(path: Path) -> dict[str, Any]:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterConfigError(f"{ADAPTER_CONFIG}: over {MAX_CONFIG_BYTES} bytes; a LoRA config is ~1 KB")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise AdapterConfigError(f"{ADAPTER_CONFIG}: not valid JSON ({err}); save it with PEFT") from None
    if not isinstance(config, dict):
        raise AdapterConfigError(f"{ADAPTER_CONFIG}: expected a JSON object, found {type(config).__name__}")
    return config


def check_config(config: dict[str, Any], max_rank: int) -> int:
    """The adapter's rank, once every field is one this server serves. Returns r."""
    if config.get("peft_type") != "LORA":
        raise AdapterConfigError(
            f"{ADAPTER_CONFIG}: /peft_type must be 'LORA' (found {config.get('peft_type')!r})"
        )
    if config.get("bias", "none") != "none":
        raise AdapterConfigError(f"{ADAPTER_CONFIG}: /bias must be 'none'; LoRA bias terms are not served")
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise AdapterConfigError(f"{ADAPTER_CONFIG}: /task_type must be 'CAUSAL_LM'")
    for key, value in config.items():
        if key not in CHECKED | HARMLESS and value not in (None, False, {}, [], ""):
            raise AdapterConfigError(
                f"{ADAPTER_CONFIG}: /{key[:60]} is set ({json.dumps(value)[:60]}); forma serves plain LoRA "
                "adapters only (no DoRA, bias, modules_to_save, layer or rank patterns): retrain without it"
            )
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= max_rank:
        raise AdapterConfigError(
            f"{ADAPTER_CONFIG}: /r is {rank!r}; this server loads ranks 1..{max_rank} (--max-lora-rank)"
        )
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        raise AdapterConfigError(f"{ADAPTER_CONFIG}: /lora_alpha must be a positive number")
    targets = config.get("target_modules")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise AdapterConfigError(
            f"{ADAPTER_CONFIG}: /target_modules must be a non-empty list of module names"
        )
    return rank


def check_tensors(
    tensors: dict[str, Any], rank: int, targets: set[str], modules: dict[str, list[int]] | None
) -> None:
    """Every tensor is a LoRA A [r, in] or B [out, r] of a targeted module of the base, sized to fit it."""
    for key, info in tensors.items():
        match = LORA_TENSOR.match(key)
        if match is None:
            raise AdapterConfigError(f"{ADAPTER_WEIGHTS}: tensor {key[:80]!r} is not a LoRA A/B matrix")
        module, side, shape = match["module"], match["side"], info["shape"]
        if module.rsplit(".", 1)[-1] not in targets:
            raise AdapterConfigError(f"{ADAPTER_WEIGHTS}: tensor {key[:80]!r} is outside /target_modules")
        if len(shape) != 2 or shape[0 if side == "A" else 1] != rank:
            raise AdapterConfigError(
                f"{ADAPTER_WEIGHTS}: tensor {key[:80]!r} has shape {shape}, which is not rank r={rank}"
            )
        if modules is None:
            continue
        base_shape = modules.get(module)
        if base_shape is None:
            raise AdapterConfigError(f"{ADAPTER_WEIGHTS}: module {module[:80]!r} does not exist in the base")
        if shape[1] != base_shape[1] if side == "A" else shape[0] != base_shape[0]:
            raise AdapterConfigError(
                f"{ADAPTER_WEIGHTS}: tensor {key[:80]!r} has shape {shape}; the base's {module[:80]} is "
                f"{base_shape} [out, in]"
            )
    unknown = targets - {key.rsplit(".", 1)[-1] for key in modules} if modules is not None else set()
    if unknown:
        raise AdapterConfigError(
            f"{ADAPTER_CONFIG}: /target_modules names {sorted(unknown)[:5]}, absent from the base model"
        )


@lru_cache(maxsize=4)
def base_modules(base: str) -> dict[str, list[int]]:
    """The base model's 2-D weights (linear layers) as module path -> [out, in], from safetensors headers."""
    found: dict[str, list[int]] = {}
    for path in sorted(Path(base).glob("*.safetensors")):
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
        for key, info in header.items():
            if key.endswith(".weight") and len(info.get("shape", [])) == 2:
                found[key.removesuffix(".weight")] = info["shape"]
    return found
