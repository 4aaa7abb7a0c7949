"""The run folder as a record: its id, the manifest's inputs, the adapter's atomic publication.

Order matters for readers: the folder and a `running` manifest come first, the adapter is published by
renaming a complete staged folder, and only then is the manifest rewritten with `adapter_sha256` and
`status="completed"`. So nobody ever sees a completed manifest without its adapter.
"""

from __future__ import annotations

import platform
import secrets
import shutil
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from finetune.data import TrainingData
from finetune.run import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_WEIGHTS,
    BaseModelRef,
    DatasetRef,
    RunManifest,
    file_sha256,
    write_manifest,
)
from schemas.fileio import staged_dir
from schemas.prompt import prompt_hash

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "safetensors", "forma")


def new_run_id(schema_name: str, now: datetime | None = None) -> str:
    """`<schema>-<UTC yyyymmddThhmmss>-<6 hex>`: sortable by time, unique without coordination."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")
    return f"{schema_name}-{stamp}-{secrets.token_hex(3)}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def hardware(threads: int, precision: str, world_size: int) -> dict[str, Any]:
    import psutil
    import torch

    info: dict[str, Any] = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch_threads": threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "precision": precision,
        "world_size": world_size,
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def start_manifest(
    run_id: str, data: TrainingData, base: BaseModelRef, config: dict[str, Any], hw: dict[str, Any]
) -> RunManifest:
    return RunManifest(
        run_id=run_id,
        schema_name=data.name,
        schema_version=data.schema_version,
        dataset=DatasetRef(sha256=data.dataset_sha256, counts=dict(data.counts)),
        base_model=base,
        prompt_hash=prompt_hash(),
        config=config,
        versions=library_versions(),
        hardware=hw,
        created_at=now_iso(),
    )


def publish_adapter(model: Any, folder: Path) -> str:
    """Save the PEFT adapter into `folder/adapter` atomically (staged + renamed); return its sha256."""
    final = folder / ADAPTER_DIR
    if final.exists():
        # Left by an attempt killed between this rename and its `completed` manifest: never recorded, so
        # never served (readers need the manifest's hash); replaced, or the resume could never publish.
        shutil.rmtree(final)
    with staged_dir(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        # Only the weights and config travel: serving accepts nothing else (no README, no pickles).
        for extra in tmp.iterdir():
            if extra.name not in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
                extra.unlink()
    return file_sha256(final / ADAPTER_WEIGHTS)


def finish_manifest(folder: Path, manifest: RunManifest, adapter_sha256: str, **results: Any) -> RunManifest:
    fields = manifest.model_dump() | {"error": None, "failure": None}  # a resumed failure is over
    done = RunManifest.model_validate({**fields, **results, "finished_at": now_iso()})
    # Set last, in the same atomic write: `completed` is never visible without the adapter hash.
    done = done.model_copy(update={"adapter_sha256": adapter_sha256, "status": "completed"})
    write_manifest(folder, done)
    return done
