"""A training run on disk: its folder layout, its manifest, and how later steps find and check it.

runs/<run_id>/
  manifest.json        what went in (schema, dataset, base, prompt hash, config) and what came out
  adapter/             adapter_model.safetensors + adapter_config.json (PEFT format, vLLM-loadable)
  metrics.jsonl        one line per logged step
  data_order.jsonl     the train example ids each optimizer step saw (a step re-run after a resume repeats)
  tb/                  TensorBoard event files
  checkpoints/         resumable trainer checkpoints
Evaluation adds eval.json, eval.md, eval.html, generations.jsonl and gate.json beside them.
"""

from __future__ import annotations

import hashlib
import json
import math
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.fileio import atomic_write_json

MANIFEST = "manifest.json"
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# A run on another host whose heartbeat is older than this is shown as interrupted (RELIABILITY G7).
STALE_AFTER_S = 120.0
Status = Literal["running", "completed", "failed", "cancelled", "interrupted"]


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
    status: Status = Field(
        default="running",
        description="As written by the trainer, except `interrupted`: a `running` run whose process is gone.",
    )
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
    error: str | None = Field(default=None, description="Why the run failed, was cancelled or interrupted.")
    failure: Literal["retryable", "permanent"] | None = Field(
        default=None,
        description="'retryable': a full disk or memory; free it and --resume. 'permanent': a bug or bad input.",
    )
    pid: int | None = Field(default=None, description="Process that trains (or last trained) the run.")
    host: str | None = Field(default=None, description="Host name of that process.")
    process_started_at: float | None = Field(
        default=None, description="That process's start time (epoch s): tells it from a reused pid."
    )
    heartbeat_at: str | None = Field(default=None, description="Last sign of life of the training process.")


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
    """The manifest as it stands now: a `running` one whose trainer is gone reads as `interrupted`."""
    try:
        manifest = RunManifest.model_validate(json.loads((folder / MANIFEST).read_text()))
    except (OSError, ValueError) as err:
        raise RunError(f"{folder / MANIFEST}: unreadable run manifest ({err})") from err
    return observed(manifest)


def _process_alive(pid: int, started_at: float | None) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        created, zombie = process.create_time(), process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
    # A pid is reused after its process exits; the start time tells the two apart.
    return not zombie and (started_at is None or abs(created - started_at) < 1.0)


def _utc(stamp: str) -> datetime:
    parsed = datetime.fromisoformat(stamp)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # forma writes UTC


def vanished(manifest: RunManifest, now: datetime | None = None) -> str | None:
    """Why a `running` manifest's trainer is known to be gone (kill -9, lost host), or None if it may live."""
    if manifest.host == socket.gethostname() and manifest.pid is not None:
        if _process_alive(manifest.pid, manifest.process_started_at):
            return None
        return f"its process {manifest.pid} on {manifest.host} is gone (killed or crashed)"
    last = manifest.heartbeat_at or manifest.created_at
    age = ((now or datetime.now(UTC)) - _utc(last)).total_seconds()
    if age <= STALE_AFTER_S:
        return None
    return (
        f"no heartbeat from {manifest.host or 'its host'} since {last} ({age:.0f} s > {STALE_AFTER_S:.0f} s)"
    )


def observed(manifest: RunManifest, now: datetime | None = None) -> RunManifest:
    """Never `running` forever: a run whose trainer vanished shows as `interrupted` (resumable)."""
    if manifest.status != "running":
        return manifest
    reason = vanished(manifest, now)
    if reason is None:
        return manifest
    return manifest.model_copy(update={"status": "interrupted", "error": reason})


def write_manifest(folder: Path, manifest: RunManifest) -> None:
    atomic_write_json(folder / MANIFEST, manifest.model_dump(mode="json"))


def load_run(runs_root: Path, run: str) -> tuple[Path, RunManifest]:
    folder = run_dir(runs_root, run)
    return folder, load_manifest(folder)


def list_runs(runs_root: Path, name: str | None = None) -> list[tuple[Path, RunManifest]]:
    """Every readable run under `runs_root` (of schema `name` if given), oldest first."""
    found = []
    for folder in sorted(runs_root.iterdir()) if runs_root.is_dir() else []:
        if folder.name.startswith(".") or not (folder / MANIFEST).is_file():
            continue
        try:
            manifest = load_manifest(folder)
        except RunError:
            continue
        if name is None or manifest.schema_name == name:
            found.append((folder, manifest))
    return sorted(found, key=lambda item: item[1].created_at)


# What a served adapter folder may hold (RELIABILITY C2): safetensors weights and the PEFT config, plus
# the README.md PEFT writes (inert text). Anything else is refused, pickles above all: adapter_model.bin
# or .pt run code when loaded (CVE-2025-24357) and vLLM falls back to them, so they are never opened.
ADAPTER_FILES = frozenset({ADAPTER_WEIGHTS, ADAPTER_CONFIG, "README.md"})
# A rank-64 LoRA on every projection of a 7B model is ~320 MB in bf16: a larger file is refused from its
# size before a byte is read (RELIABILITY C4). The header of such an adapter is ~150 KB; 8 MiB bounds
# what a lying header can make us allocate.
MAX_ADAPTER_BYTES = 1 << 30
MAX_HEADER_BYTES = 8 << 20
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1}


class UnsupportedArtifact(RunError):
    """An adapter folder forma will not open: pickles, extra files, links, oversized or malformed weights."""


def verified_adapter(folder: Path, manifest: RunManifest, max_bytes: int = MAX_ADAPTER_BYTES) -> Path:
    """The run's adapter folder, refused unless it holds only safe files, its safetensors header agrees
    with its size, and its weights match the hash the manifest recorded. Checked in that order, so a
    pickle is never read and a size bomb is refused from `stat` and an 8-byte read."""
    adapter = folder / ADAPTER_DIR
    if manifest.status != "completed" or manifest.adapter_sha256 is None:
        raise RunError(f"run {manifest.run_id} is {manifest.status}: it has no finished adapter")
    check_adapter_files(adapter, manifest.run_id)
    weights = adapter / ADAPTER_WEIGHTS
    size = weights.stat().st_size
    if size > max_bytes:
        raise UnsupportedArtifact(
            f"run {manifest.run_id}: {ADAPTER_DIR}/{ADAPTER_WEIGHTS} is {size} bytes, over the "
            f"{max_bytes}-byte limit for a LoRA adapter; lower the rank or the target modules"
        )
    safetensors_header(weights, size)
    actual = file_sha256(weights)
    if actual != manifest.adapter_sha256:
        raise RunError(
            f"run {manifest.run_id}: {ADAPTER_DIR}/{ADAPTER_WEIGHTS} has sha256 {actual[:12]}, but the "
            f"manifest recorded {manifest.adapter_sha256[:12]}; the adapter was changed or corrupted after training"
        )
    return adapter


def check_adapter_files(adapter: Path, run_id: str) -> None:
    """Refuse a folder that is a link, lacks the two files, or holds anything else (listed, never opened)."""
    where = f"run {run_id}: {ADAPTER_DIR}/"
    if adapter.is_symlink() or not adapter.is_dir():
        raise UnsupportedArtifact(
            f"{where} is missing or is a link; a run keeps its adapter in its own folder"
        )
    entries = {path.name: path for path in adapter.iterdir()}
    extra = sorted(set(entries) - ADAPTER_FILES)
    if extra:
        raise UnsupportedArtifact(
            f"{where} holds {', '.join(extra)[:200]}: only {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG} are served, "
            "and pickle weights (.bin, .pt) can run code when loaded; re-save with safe_serialization=True "
            "and remove the other files"
        )
    missing = [name for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) if name not in entries]
    if missing:
        raise RunError(f"{where} lacks {' and '.join(missing)}")
    links = [name for name, path in entries.items() if path.is_symlink() or not path.is_file()]
    if links:
        raise UnsupportedArtifact(f"{where}{', '.join(links)} is a link or not a file; copy the real file in")


def safetensors_header(path: Path, size: int) -> dict[str, Any]:
    """The tensor table of a safetensors file, checked against the file size before any tensor is read:
    every tensor's shape x dtype must fill exactly its byte span, and the spans exactly the data."""
    name = f"{ADAPTER_DIR}/{path.name}"
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
            raise UnsupportedArtifact(f"{name}: not a safetensors file (header of {length} bytes in {size})")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise UnsupportedArtifact(f"{name}: its safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise UnsupportedArtifact(f"{name}: its safetensors header is not a JSON object")
    tensors = {key: info for key, info in header.items() if key != "__metadata__"}
    end = 0
    for begin, stop in sorted(_tensor_span(name, key, info) for key, info in tensors.items()):
        if begin != end:
            raise UnsupportedArtifact(f"{name}: tensors overlap or leave gaps at byte {begin}")
        end = stop
    if end != size - 8 - length:
        raise UnsupportedArtifact(
            f"{name}: its header declares {end} bytes of tensors, but the file holds {size - 8 - length}"
        )
    return tensors


def _tensor_span(name: str, key: str, info: Any) -> tuple[int, int]:
    try:
        itemsize = DTYPE_BYTES[info["dtype"]]
        shape = [int(dim) for dim in info["shape"]]
        begin, stop = (int(offset) for offset in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise UnsupportedArtifact(f"{name}: tensor {key[:80]!r} has a malformed or unknown entry") from None
    if min(shape, default=1) < 0 or math.prod(shape) * itemsize != stop - begin or begin < 0:
        raise UnsupportedArtifact(
            f"{name}: tensor {key[:80]!r} declares {info['dtype']} {shape} but spans bytes {begin}..{stop}"
        )
    return begin, stop
