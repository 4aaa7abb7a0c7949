"""The release ledger: an append-only JSONL file per schema, saying which run is live.

releases/<schema>.jsonl holds one event per line: a `promote` carries the full release record, a
`rollback` names the release that became live again. The live release is found by replaying the file.
Writes hold a lock and replace the file atomically, so a reader never sees half a line.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock
from pydantic import BaseModel, Field

from schemas.fileio import atomic_write_text


class Release(BaseModel):
    """A run made live for its schema. `release_id` is content-addressed: schema + adapter hash."""

    release_id: str = Field(
        description="<schema>-<adapter sha256[:12]>: the name the engine serves it under."
    )
    schema_name: str
    schema_version: str
    run_id: str
    run_dir: str
    adapter_sha256: str
    base_model_id: str
    base_model_sha256: str
    prompt_hash: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    gate_passed: bool
    forced: bool = False
    reason: str | None = None
    promoted_at: str


class LedgerEvent(BaseModel):
    event: Literal["promote", "rollback"]
    release: Release
    at: str


class LedgerError(RuntimeError):
    """A promotion or rollback the ledger refuses, with the reason."""


def release_id(schema_name: str, adapter_sha256: str) -> str:
    return f"{schema_name}-{adapter_sha256[:12]}"


def _path(root: Path, schema_name: str) -> Path:
    return root / f"{schema_name}.jsonl"


def read_events(root: Path, schema_name: str) -> list[LedgerEvent]:
    path = _path(root, schema_name)
    if not path.is_file():
        return []
    return [LedgerEvent.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


def live_stack(events: list[LedgerEvent]) -> list[Release]:
    """Replay the ledger: promotions push, rollbacks pop; the last element is live."""
    stack: list[Release] = []
    for event in events:
        if event.event == "promote":
            stack.append(event.release)
        elif stack:
            stack.pop()
    return stack


def live_release(root: Path, schema_name: str) -> Release | None:
    stack = live_stack(read_events(root, schema_name))
    return stack[-1] if stack else None


def live_releases(root: Path) -> dict[str, Release]:
    """Every schema's live release: what the server serves."""
    if not root.is_dir():
        return {}
    found = {path.stem: live_release(root, path.stem) for path in sorted(root.glob("*.jsonl"))}
    return {name: release for name, release in found.items() if release is not None}


def _append(root: Path, schema_name: str, event: LedgerEvent) -> None:
    path = _path(root, schema_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + event.model_dump_json() + "\n")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def promote(root: Path, release: Release) -> Release:
    """Make `release` live. A failed gate is refused unless forced with a reason, which is recorded."""
    if not release.gate_passed and not (release.forced and release.reason):
        raise LedgerError(
            f"run {release.run_id} failed its gate: not promoted. Fix the run, or pass --force with "
            "--reason TEXT to promote it anyway (the reason is recorded in the ledger)"
        )
    with FileLock(str(_path(root, release.schema_name)) + ".lock"):
        _append(root, release.schema_name, LedgerEvent(event="promote", release=release, at=_now()))
    return release


def rollback(root: Path, schema_name: str) -> Release:
    """Make the release before the live one live again; returns it."""
    with FileLock(str(_path(root, schema_name)) + ".lock"):
        stack = live_stack(read_events(root, schema_name))
        if len(stack) < 2:
            raise LedgerError(
                f"{schema_name}: no earlier release to roll back to ({len(stack)} live in history)"
            )
        previous = stack[-2]
        _append(root, schema_name, LedgerEvent(event="rollback", release=previous, at=_now()))
    return previous


def history(root: Path, schema_name: str) -> list[dict[str, Any]]:
    """Ledger lines as plain dicts, oldest first, for `forma releases NAME`."""
    return [json.loads(event.model_dump_json()) for event in read_events(root, schema_name)]
