"""A training run on disk: its folder layout, its manifest, and how later steps find and check it.

runs/<run_id>/
  manifest.json        what went in (schema, dataset, base, prompt hash, config) and what came out
  adapter/             adapter_model.safetensors + adapter_config.json (PEFT format, vLLM-loadable)
  metrics.jsonl        one line per logged step
  tb/                  TensorBoard event files
  checkpoints/         resumable trainer checkpoints
Evaluation adds eval.json, eval.md, eval.html, generations.jsonl and gate.json beside them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.fileio import atomic_write_json

MANIFEST = "manifest.json"
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class BaseModelRef(BaseModel):
    id: str
    path: str
    content_sha256: str


class DatasetRef(BaseModel):
    sha256: str = Field(description="Content hash of the dataset the run trained on.")
    counts: dict[str, int] = Field(description="Pairs per split: train, val, test.")


class RunManifest(BaseModel):
    """Everything a later step needs to trust, reproduce or refuse a run."""

    model_config = ConfigDict(extra="allow")

    run_id: str
    status: Literal["running", "completed", "failed"] = "running"
    schema_name: str
    schema_version: str
    dataset: DatasetRef
    base_model: BaseModelRef
    prompt_hash: str
    config: dict[str, Any]
    adapter_sha256: str | None = Field(
        default=None, description="sha256 of adapter/adapter_model.safetensors."
    )
    metrics: dict[str, Any] = Field(default_factory=dict)
    tokens_per_s: float | None = None
    wall_s: float | None = None
    peak_memory_mb: float | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    hardware: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    finished_at: str | None = None


class RunError(RuntimeError):
    """A run that cannot be found or trusted, with the reason."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_dir(runs_root: Path, run: str) -> Path:
    """A run given as an id (under runs_root) or as a folder path: both work wherever RUN is taken."""
    candidate = Path(run)
    folder = candidate if (candidate / MANIFEST).is_file() else runs_root / run
    if not (folder / MANIFEST).is_file():
        raise RunError(f"no run {run!r}: neither a run folder nor a run id under {runs_root}")
    return folder.resolve()


def load_manifest(folder: Path) -> RunManifest:
    try:
        return RunManifest.model_validate(json.loads((folder / MANIFEST).read_text()))
    except (OSError, ValueError) as err:
        raise RunError(f"{folder / MANIFEST}: unreadable run manifest ({err})") from err


def write_manifest(folder: Path, manifest: RunManifest) -> None:
    atomic_write_json(folder / MANIFEST, manifest.model_dump(mode="json"))


def load_run(runs_root: Path, run: str) -> tuple[Path, RunManifest]:
    folder = run_dir(runs_root, run)
    return folder, load_manifest(folder)


def verified_adapter(folder: Path, manifest: RunManifest) -> Path:
    """The run's adapter folder, refused unless complete and matching the hash its manifest recorded."""
    adapter = folder / ADAPTER_DIR
    weights = adapter / ADAPTER_WEIGHTS
    if manifest.status != "completed" or manifest.adapter_sha256 is None:
        raise RunError(f"run {manifest.run_id} is {manifest.status}: it has no finished adapter")
    if not weights.is_file() or not (adapter / ADAPTER_CONFIG).is_file():
        raise RunError(f"run {manifest.run_id}: {adapter} lacks {ADAPTER_WEIGHTS} or {ADAPTER_CONFIG}")
    actual = file_sha256(weights)
    if actual != manifest.adapter_sha256:
        raise RunError(
            f"run {manifest.run_id}: {weights} has sha256 {actual[:12]}, but the manifest recorded "
            f"{manifest.adapter_sha256[:12]}; the adapter was changed or corrupted after training"
        )
    return adapter
