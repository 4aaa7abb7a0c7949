"""Eval metrics as pure functions of generation records: nothing here runs a model or reads a file.

An output counts as the user would see it from the server: a generation cut off at max_tokens
(finish_reason "length") is invalid and never parsed or repaired; only schema-valid outputs count as
predictions for exact match and field scores (the server refuses the others), so an invalid output
scores as "no fields extracted".
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from evals.fields import LeafMatch, field_path, match_leaves
from evals.records import GenerationRecord

Validator = Callable[[Any], list[tuple[str, str]]]
NONE, INVALID = "(none)", "(invalid)"


class PairScore(BaseModel):
    """One generation, judged."""

    model_config = ConfigDict(extra="forbid")

    pair: int
    parsed: bool
    valid: bool
    truncated: bool
    exact: bool
    tp: int
    fp: int
    fn: int
    errors: list[tuple[str, str]]
    wrong_fields: list[str]


class ModeMetrics(BaseModel):
    """Every metric for one model in one decoding mode."""

    model_config = ConfigDict(extra="forbid")

    n: int
    parse_rate: float
    valid_rate: float
    truncated_rate: float
    exact_match: float
    precision: float
    recall: float
    f1: float
    field_accuracy: dict[str, dict[str, float]]
    enum_confusion: dict[str, dict[str, dict[str, int]]]
    latency_p50_s: float
    latency_p95_s: float
    tokens_per_s: float


def parse_output(record: GenerationRecord) -> tuple[bool, Any]:
    """(parsed, value). A truncated generation is never parsed: a cut JSON is not an answer."""
    if record.finish_reason == "length":
        return False, None
    try:
        return True, json.loads(record.text)
    except ValueError:
        return False, None


def score_pair(record: GenerationRecord, validate: Validator) -> tuple[PairScore, LeafMatch]:
    parsed, value = parse_output(record)
    errors = validate(value) if parsed else []
    valid = parsed and not errors
    match = match_leaves(record.expected, value if valid else None)
    wrong = sorted({field_path(p) for p, _ in (match.fp + match.fn)})
    exact = valid and _canonical(value) == _canonical(record.expected)
    score = PairScore(
        pair=record.pair,
        parsed=parsed,
        valid=valid,
        truncated=record.finish_reason == "length",
        exact=exact,
        tp=sum(match.tp.values()),
        fp=sum(match.fp.values()),
        fn=sum(match.fn.values()),
        errors=errors[:5],
        wrong_fields=wrong,
    )
    return score, match


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Micro precision, recall, F1. Nothing expected and nothing predicted is a perfect score; otherwise an
    empty side scores 0 (predicting nothing is not "precise" when something was expected)."""
    perfect = 1.0 if tp + fp + fn == 0 else 0.0
    precision = tp / (tp + fp) if tp + fp else perfect
    recall = tp / (tp + fn) if tp + fn else perfect
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy's default."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def field_accuracy(matches: list[LeafMatch]) -> dict[str, dict[str, float]]:
    """Per field: the share of pairs whose leaves for that field are all right (pairs where it occurs)."""
    seen: Counter[str] = Counter()
    right: Counter[str] = Counter()
    for match in matches:
        fields = {field_path(p) for p, _ in (match.tp + match.fp + match.fn)}
        wrong = {field_path(p) for p, _ in (match.fp + match.fn)}
        seen.update(fields)
        right.update(fields - wrong)
    return {f: {"accuracy": right[f] / seen[f], "n": seen[f]} for f in sorted(seen)}


def enum_confusion(
    matches: list[LeafMatch], valid: list[bool], enum_paths: set[str]
) -> dict[str, dict[str, dict[str, int]]]:
    """Per enum field: counts of (expected value -> predicted value); (none) for absent, (invalid) output."""
    table: dict[str, dict[str, dict[str, int]]] = {}
    for match, ok in zip(matches, valid, strict=True):
        for path in sorted(enum_paths):
            gold = sorted(_values(match.tp + match.fn, path))
            guess = sorted(_values(match.tp + match.fp, path)) if ok else []
            for expected, predicted in _pairs(gold, guess, ok):
                row = table.setdefault(path, {}).setdefault(expected, {})
                row[predicted] = row.get(predicted, 0) + 1
    return table


def _values(leaves: Counter[tuple[str, str]], path: str) -> list[str]:
    return [
        json.loads(v) if v.startswith('"') else v
        for (p, v), k in leaves.items()
        if field_path(p) == path
        for _ in range(k)
    ]


def _pairs(gold: list[str], guess: list[str], ok: bool) -> list[tuple[str, str]]:
    """Line up expected and predicted values: equal ones first, then the rest in order."""
    common = list((Counter(gold) & Counter(guess)).elements())
    rest_gold = list((Counter(gold) - Counter(common)).elements())
    rest_guess = list((Counter(guess) - Counter(common)).elements())
    pairs = [(v, v) for v in common]
    for index in range(max(len(rest_gold), len(rest_guess))):
        expected = rest_gold[index] if index < len(rest_gold) else NONE
        predicted = rest_guess[index] if index < len(rest_guess) else (NONE if ok else INVALID)
        pairs.append((expected, predicted))
    return pairs


def mode_metrics(
    records: list[GenerationRecord], validate: Validator, enum_paths: set[str]
) -> tuple[ModeMetrics, list[PairScore]]:
    """All metrics for the records of one model in one mode, and the per-pair scores behind them."""
    judged = [score_pair(r, validate) for r in records]
    scores = [s for s, _ in judged]
    matches = [m for _, m in judged]
    n = len(records) or 1
    precision, recall, f1 = prf(
        sum(s.tp for s in scores), sum(s.fp for s in scores), sum(s.fn for s in scores)
    )
    latency = [r.latency_s for r in records]
    metrics = ModeMetrics(
        n=len(records),
        parse_rate=sum(s.parsed for s in scores) / n,
        valid_rate=sum(s.valid for s in scores) / n,
        truncated_rate=sum(s.truncated for s in scores) / n,
        exact_match=sum(s.exact for s in scores) / n,
        precision=precision,
        recall=recall,
        f1=f1,
        field_accuracy=field_accuracy(matches),
        enum_confusion=enum_confusion(matches, [s.valid for s in scores], enum_paths),
        latency_p50_s=percentile(latency, 50),
        latency_p95_s=percentile(latency, 95),
        tokens_per_s=sum(r.tokens for r in records) / (sum(latency) or 1.0),
    )
    return metrics, scores
