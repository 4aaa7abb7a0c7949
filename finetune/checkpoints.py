"""Crash-safe checkpoints: a completeness marker with per-file sha256, written last.

transformers writes `checkpoint-N/` file by file, so a `kill -9` or a full disk can leave one half
written (transformers #35782, #35525). After every save, rank 0 hashes each file and writes
`forma-complete.json` atomically; on resume only checkpoints whose marker exists and whose files still
match it are trusted, newest first, and any skipped one is named.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from finetune.run import file_sha256
from schemas.fileio import atomic_write_json

MARKER = "forma-complete.json"
PREFIX = "checkpoint-"


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


class CompletenessMarker(TrainerCallback):
    """Writes the marker after transformers has written every file of a checkpoint."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            write_marker(Path(args.output_dir) / f"{PREFIX}{state.global_step}", state.global_step)
