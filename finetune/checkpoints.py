"""Crash-safe checkpoints: a completeness marker with per-file sha256, written last.

transformers writes `checkpoint-N/` file by file, so a `kill -9` or a full disk can leave one half
written (transformers #35782, #35525). After every save, rank 0 hashes each file and writes
`forma-complete.json` atomically; on resume only checkpoints whose marker exists and whose files still
match it are trusted, newest first, and any skipped one is named.

The Trainer restores its state from pickles (optimizer.pt, scheduler.pt, rng_state.pth), and a pickle
can run code when loaded (CVE-2025-32434, CVE-2026-1839). transformers loads them with
`weights_only=True`, which is safe only on torch >= 2.6; forma checks the versions before training and
loads every pickle of the chosen checkpoint that way itself first, so a tampered one is refused by name.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetune.run import RunError, file_sha256
from schemas.fileio import atomic_write_json

MARKER = "forma-complete.json"
PREFIX = "checkpoint-"
# The pickles the Trainer loads on resume (training_args.bin is written but never loaded).
RESUME_PICKLES = ("*.pt", "*.pth")
# The first releases whose checkpoint loading is safe: torch.load(weights_only=True) can be bypassed
# before torch 2.6 (CVE-2025-32434); transformers before 5.0.0rc3 (CVE-2026-1839) loads unsafely.
SAFE_MINIMUMS = {"torch": "2.6", "transformers": "5.0.0rc3"}


def write_marker(folder: Path, step: int) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
    hashes = {str(p.relative_to(folder)): file_sha256(p) for p in files}
    atomic_write_json(folder / MARKER, {"step": step, "files": hashes})


def incomplete_reason(folder: Path) -> str | None:
    """Why a checkpoint cannot be trusted, or None when its marker and every file check out."""
    marker = folder / MARKER
    if not marker.is_file():
        return f"no {MARKER} (the save did not finish)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError) as err:
        return f"unreadable {MARKER} ({err})"
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != digest:
            return f"{name} differs from the sha256 its marker recorded"
    return None


def _step(folder: Path) -> int:
    suffix = folder.name.removeprefix(PREFIX)
    return int(suffix) if suffix.isdigit() else -1


def latest_complete(root: Path, warn: Callable[[str], None] = print) -> Path | None:
    """The newest trustworthy checkpoint under `root`; incomplete newer ones are named and skipped."""
    if not root.is_dir():
        return None
    candidates = sorted((p for p in root.glob(f"{PREFIX}*") if p.is_dir()), key=_step, reverse=True)
    for folder in candidates:
        reason = incomplete_reason(folder)
        if reason is None:
            return folder
        warn(f"skipping checkpoint {folder.name}: {reason}")
    return None


def unsafe_versions(found: dict[str, str]) -> list[str]:
    """The packages in `found` (name -> version) older than their safe minimum, each with the fix."""
    from packaging.version import Version

    return [
        f"{name} {found[name]} is older than {minimum}: loading a checkpoint can run code "
        f"(see finetune/checkpoints.py); pip install '{name}>={minimum}'"
        for name, minimum in SAFE_MINIMUMS.items()
        if name in found and Version(found[name]) < Version(minimum)
    ]


def check_safe_versions(found: dict[str, str] | None = None) -> None:
    """Refuse to train (or resume) with a torch or transformers whose checkpoint loading is unsafe."""
    from importlib.metadata import version

    problems = unsafe_versions(found or {name: version(name) for name in SAFE_MINIMUMS})
    if problems:
        raise RunError("; ".join(problems))


def unsafe_pickle(folder: Path) -> str | None:
    """Why a checkpoint's pickles cannot be trusted (one that would build an object, e.g. run code)."""
    import pickle

    import torch
    from transformers.trainer_pt_utils import safe_globals

    paths = sorted({p for pattern in RESUME_PICKLES for p in folder.glob(pattern)})
    for path in paths:
        try:
            with safe_globals():  # the numpy types rng_state.pth holds, as transformers allows them
                torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return f"{path.name} is not plain tensor data ({first})"
    return None


def resume_point(root: Path, clean: bool = True, warn: Callable[[str], None] = print) -> Path | None:
    """The checkpoint to resume from: the newest complete one, with safe pickles; None to start fresh.

    Newer incomplete checkpoints are removed after being named (by the one process that owns the run,
    `clean`): transformers counts them against `save_total_limit`, and rotating them in could delete
    the complete one. A complete checkpoint
    whose pickles would run code is refused (someone rewrote it and its marker), never loaded.
    """
    chosen = latest_complete(root, warn)
    floor = _step(chosen) if chosen else -1
    for folder in root.glob(f"{PREFIX}*") if clean and root.is_dir() else []:
        if folder.is_dir() and _step(folder) > floor:
            shutil.rmtree(folder)
    if chosen is None:
        return None
    reason = unsafe_pickle(chosen)
    if reason:
        raise RunError(
            f"refusing to resume from {chosen}: {reason}. A checkpoint never holds code, so it was "
            f"tampered with; delete that folder to resume from an older checkpoint, or start a new run"
        )
    return chosen


class CompletenessMarker(TrainerCallback):
    """Writes the marker after transformers has written every file of a checkpoint."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            write_marker(Path(args.output_dir) / f"{PREFIX}{state.global_step}", state.global_step)
