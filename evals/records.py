"""generations.jsonl: one line per generation, the raw material every eval number is computed from.

Kept in the run folder so the report can be recomputed (and audited) without running a model again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.fileio import atomic_write_text

GENERATIONS = "generations.jsonl"
ModelRole = Literal["candidate", "base", "live"]
Mode = Literal["constrained", "unconstrained"]
MODES: tuple[Mode, ...] = ("constrained", "unconstrained")


class GenerationRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelRole = Field(
        description="candidate (the run), base (untuned, schema in prompt), live release."
    )
    mode: Mode = Field(
        description="constrained: decoding restricted to the schema; unconstrained: free text."
    )
    pair: int = Field(description="Index of the pair in the evaluated set.")
    input: str
    expected: Any
    adapter: str | None = Field(description="The adapter's served name; None for the base model.")
    text: str
    finish_reason: str
    tokens: int
    latency_s: float


def write_generations(folder: Path, records: list[GenerationRecord]) -> Path:
    path = folder / GENERATIONS
    atomic_write_text(path, "".join(r.model_dump_json() + "\n" for r in records))
    return path


def read_generations(folder: Path) -> list[GenerationRecord]:
    path = folder / GENERATIONS
    return [
        GenerationRecord.model_validate(json.loads(line)) for line in path.read_text().splitlines() if line
    ]
