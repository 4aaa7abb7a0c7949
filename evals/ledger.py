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
from pydantic import BaseModel, Field, ValidationError

from schemas.fileio import atomic_write_text
from schemas.registry import NAME_RE

# Every name the ledger holds becomes part of a path or an engine model name, so each must match an
# allowlist (RELIABILITY C1): no '/', '..', NUL, unicode lookalikes or 300-character names get through.
NAME = NAME_RE.pattern
RUN_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
HEX64 = r"^[0-9a-f]{64}$"


class Release(BaseModel):
    """A run made live for its schema. `release_id` is content-addressed: schema + adapter hash."""

    release_id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}-[0-9a-f]{12}$",
        description="<schema>-<adapter sha256[:12]>: the name the engine serves it under.",
    )
    schema_name: str = Field(pattern=NAME)
    schema_version: str = Field(pattern=r"^[0-9a-f]{6,64}$")
    run_id: str = Field(pattern=RUN_ID)
    run_dir: str = Field(description="The run folder; serving refuses one outside its runs root.")
    adapter_sha256: str = Field(pattern=HEX64)
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
    if not NAME_RE.match(schema_name):
        raise LedgerError(f"invalid schema name {schema_name[:80]!r}: use 1-64 of a-z, 0-9, '_' or '-'")
    return root / f"{schema_name}.jsonl"


def read_events(root: Path, schema_name: str) -> list[LedgerEvent]:
    path = _path(root, schema_name)
    if not path.is_file():
        return []
    events = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(LedgerEvent.model_validate_json(line))
        except ValidationError as err:
            first = err.errors()[0]
            pointer = "/" + "/".join(str(part) for part in first["loc"])
            raise LedgerError(
                f"{path.name}:{number}: {pointer}: {first['msg']}; fix or remove the line"
            ) from None
    return events


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
    """Every schema's live release: what the server serves (unreadable ledgers are left out)."""
    return read_live(root)[0]


def read_live(root: Path) -> tuple[dict[str, Release], dict[str, str]]:
    """Every schema's live release, and why each ledger file that cannot be served was refused.
    One bad file (a hand edit, a name off the allowlist) never hides the other schemas' releases."""
    live: dict[str, Release] = {}
    problems: dict[str, str] = {}
    for path in sorted(root.glob("*.jsonl")) if root.is_dir() else []:
        name = path.stem
        try:
            release = live_release(root, name)
        except (LedgerError, OSError, UnicodeDecodeError) as err:
            problems[name[:80]] = str(err)[:300]
            continue
        if release is not None and release.schema_name != name:
            problems[name] = f"{path.name}: its live release is for schema {release.schema_name!r}"
        elif release is not None:
            live[name] = release
    return live, problems


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
