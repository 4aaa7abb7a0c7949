"""Helpers (no tests) for the serve tests and the serve benchmark: real adapters, registered schemas,
promoted releases. The trainer is not used: a PEFT LoRA with random non-zero `lora_B` is a real adapter
vLLM loads and that changes the base model's outputs, made in seconds instead of a training run."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from evals.ledger import Release, promote, release_id
from finetune.base_model import read_info
from finetune.run import (
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    BaseModelRef,
    DatasetRef,
    RunManifest,
    file_sha256,
    write_manifest,
)
from schemas.prompt import prompt_hash

INVOICE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string", "maxLength": 24},
        "currency": {"enum": ["EUR", "USD", "GBP"]},
        "paid": {"type": "boolean"},
    },
    "required": ["vendor", "currency", "paid"],
    "additionalProperties": False,
}
TEXTS = [
    "Invoice from ACME Tools, total 120 EUR, already paid by card.",
    "Bill: Globex Ltd, amount due 75 USD, payment pending.",
    "Receipt - Initech, 42 GBP, settled in cash.",
    "Umbrella Corp invoice 9.99 EUR not yet paid.",
]


def make_adapters(base_model: Path, folders: list[Path], rank: int = 8) -> None:
    """One PEFT LoRA adapter per folder, each with different random lora_B (seeded by position)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, config)
    for seed, folder in enumerate(folders):
        torch.manual_seed(seed)
        for name, tensor in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT starts lora_B at zero, which would change nothing
                torch.nn.init.normal_(tensor, std=0.01)
        peft_model.save_pretrained(folder)


def register_schemas(
    schemas_root: Path, base_model: Path, schemas: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """Register through the real registry (grammar check included); returns each schema's version."""
    from schemas.register import register
    from schemas.worker import GrammarWorker

    with GrammarWorker(base_model) as worker:
        return {
            name: register(schemas_root, name, schema, check=worker.check).version
            for name, schema in schemas.items()
        }


def write_run(runs_root: Path, base_model: Path, adapter: Path, name: str, version: str, run_id: str) -> Path:
    """A completed run folder around `adapter`, with the manifest the trainer would write."""
    folder = runs_root / run_id
    shutil.copytree(adapter, folder / ADAPTER_DIR)
    info = read_info(base_model)
    assert info is not None
    manifest = RunManifest(
        run_id=run_id,
        status="completed",
        schema_name=name,
        schema_version=version,
        dataset=DatasetRef(sha256="0" * 64, counts={"train": 0, "val": 0, "test": 0}),
        base_model=BaseModelRef(id=info.id, path=info.path, content_sha256=info.content_sha256),
        prompt_hash=prompt_hash(),
        config={"note": "untrained test adapter (random lora_B)"},
        adapter_sha256=file_sha256(folder / ADAPTER_DIR / ADAPTER_WEIGHTS),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_manifest(folder, manifest)
    return folder


def promote_run(releases_root: Path, run: Path) -> Release:
    from finetune.run import load_manifest

    manifest = load_manifest(run)
    assert manifest.adapter_sha256 is not None
    release = Release(
        release_id=release_id(manifest.schema_name, manifest.adapter_sha256),
        schema_name=manifest.schema_name,
        schema_version=manifest.schema_version,
        run_id=manifest.run_id,
        run_dir=str(run),
        adapter_sha256=manifest.adapter_sha256,
        base_model_id=manifest.base_model.id,
        base_model_sha256=manifest.base_model.content_sha256,
        prompt_hash=manifest.prompt_hash,
        gate_passed=True,
        promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return promote(releases_root, release)


FORMA = str(Path(sys.executable).parent / "forma")


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        assert proc.poll() is None, "forma serve exited"
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout} s")


def engine_pid(proc: subprocess.Popen[bytes]) -> int:
    children = psutil.Process(proc.pid).children()
    return next(c.pid for c in children if "vllm.entrypoints" in " ".join(c.cmdline()))
