"""The eval recipe: build requests -> generate with the engine -> keep the raw generations -> score.

Every pair runs in both modes (constrained by the schema, and free) for each model: the candidate
adapter, the base model with the schema in its prompt (the best a user gets without tuning), and the
live release of the schema if there is one. Scores are computed from the stored records only, so
`score_records(read_generations(folder))` reproduces the report without a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evals.engines import AdapterRef, Engine, GenerationRequest
from evals.fields import enum_fields
from evals.inputs import Pair, SchemaRef
from evals.metrics import ModeMetrics, PairScore, mode_metrics
from evals.records import MODES, GenerationRecord, ModelRole, write_generations
from evals.validation import output_errors
from schemas.prompt import build_messages

EVAL_JSON = "eval.json"


@dataclass(frozen=True)
class Contender:
    """One model in the comparison: its role, adapter (None: base), schema version and prompt mode."""

    role: ModelRole
    adapter: AdapterRef | None
    schema: SchemaRef
    with_schema: bool = False


class EvalReport(BaseModel):
    """eval.json: the metrics per model and mode, and the per-pair scores the gate's bootstrap needs."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    schema_name: str
    schema_version: str
    source: str = Field(description="What was evaluated: 'split test' or the golden file's path.")
    engine: str
    n_pairs: int
    max_tokens: int
    adapters: dict[str, str | None] = Field(description="Role -> served adapter name (None for base).")
    metrics: dict[str, dict[str, ModeMetrics]] = Field(description="Role -> mode -> metrics.")
    pairs: dict[str, dict[str, list[PairScore]]] = Field(description="Role -> mode -> per-pair scores.")
    created_at: str
    live_skipped: str | None = Field(
        default=None, description="Why a live release exists but was not compared (the gate fails on it)."
    )


def plan(
    contenders: list[Contender], pairs: list[Pair], max_tokens: int
) -> list[tuple[GenerationRecord, GenerationRequest]]:
    """Every (contender, mode, pair) as an empty record and the request that will fill it. Pure."""
    planned = []
    for who in contenders:
        for mode in MODES:
            for index, (text, expected) in enumerate(pairs):
                ref = who.schema
                messages = build_messages(
                    ref.name, ref.schema, text, ref.instructions, with_schema=who.with_schema
                )
                schema = (ref.decoder_schema or ref.schema) if mode == "constrained" else None
                request = GenerationRequest(messages, schema, who.adapter, max_tokens)
                record = GenerationRecord(
                    model=who.role,
                    mode=mode,
                    pair=index,
                    input=text,
                    expected=expected,
                    adapter=who.adapter.name if who.adapter else None,
                    text="",
                    finish_reason="",
                    tokens=0,
                    latency_s=0.0,
                )
                planned.append((record, request))
    return planned


def generate(
    engine: Engine, planned: list[tuple[GenerationRecord, GenerationRequest]]
) -> list[GenerationRecord]:
    generations = engine.generate([request for _, request in planned])
    return [
        record.model_copy(update=generation.model_dump())
        for (record, _), generation in zip(planned, generations, strict=True)
    ]


def score_records(records: list[GenerationRecord], schema: dict[str, Any]) -> tuple[dict, dict]:
    """Metrics and per-pair scores per role and mode, from stored generations alone. Pure."""
    enums = enum_fields(schema)
    metrics: dict[str, dict[str, ModeMetrics]] = {}
    scores: dict[str, dict[str, list[PairScore]]] = {}
    for role in dict.fromkeys(r.model for r in records):
        for mode in MODES:
            group = sorted((r for r in records if r.model == role and r.mode == mode), key=lambda r: r.pair)
            if group:
                found, per_pair = mode_metrics(group, lambda v: output_errors(schema, v), enums)
                metrics.setdefault(role, {})[mode] = found
                scores.setdefault(role, {})[mode] = per_pair
    return metrics, scores


def evaluate(
    engine: Engine,
    folder: Path,
    run_id: str,
    candidate: SchemaRef,
    contenders: list[Contender],
    pairs: list[Pair],
    source: str,
    max_tokens: int,
) -> EvalReport:
    """Generate for every pair, mode and contender; write generations.jsonl; return the report."""
    records = generate(engine, plan(contenders, pairs, max_tokens))
    write_generations(folder, records)
    metrics, scores = score_records(records, candidate.schema)
    return EvalReport(
        run_id=run_id,
        schema_name=candidate.name,
        schema_version=candidate.version,
        source=source,
        engine=engine.name,
        n_pairs=len(pairs),
        max_tokens=max_tokens,
        adapters={c.role: c.adapter.name if c.adapter else None for c in contenders},
        metrics=metrics,
        pairs=scores,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def load_report(folder: Path) -> EvalReport:
    return EvalReport.model_validate_json((folder / EVAL_JSON).read_text())
