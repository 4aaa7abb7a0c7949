"""The three reports in the run folder: eval.json (everything), eval.md (for a terminal or a PR),
eval.html (self-contained: inline CSS and SVG, no external assets).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.evaluate import EVAL_JSON, EvalReport
from evals.metrics import PairScore
from evals.records import GenerationRecord, read_generations
from schemas.fileio import atomic_write_text

EVAL_MD, EVAL_HTML = "eval.md", "eval.html"
ROLES = ("candidate", "base", "live")
WORST = 6


@dataclass(frozen=True)
class Failure:
    """One of the candidate's worst pairs: what went in, what was expected, what came out, what differs."""

    pair: int
    input: str
    expected: Any
    got: str
    finish_reason: str
    wrong_fields: list[str]
    errors: list[tuple[str, str]]


def worst_failures(
    report: EvalReport, records: list[GenerationRecord], mode: str = "constrained"
) -> list[Failure]:
    """The candidate's pairs with the lowest leaf overlap (invalid outputs first), perfect ones left out."""
    scores: list[PairScore] = report.pairs.get("candidate", {}).get(mode, [])
    by_pair = {r.pair: r for r in records if r.model == "candidate" and r.mode == mode}

    def badness(s: PairScore) -> tuple[bool, float]:
        return (s.valid, s.tp / (s.tp + s.fp + s.fn) if s.tp + s.fp + s.fn else 1.0)

    failing = sorted((s for s in scores if not s.exact), key=badness)[:WORST]
    return [
        Failure(
            pair=s.pair,
            input=by_pair[s.pair].input,
            expected=by_pair[s.pair].expected,
            got=by_pair[s.pair].text,
            finish_reason=by_pair[s.pair].finish_reason,
            wrong_fields=s.wrong_fields,
            errors=s.errors,
        )
        for s in failing
    ]


def write_reports(folder: Path, report: EvalReport) -> None:
    from evals.report_html import render_html
    from evals.report_md import render_markdown

    failures = worst_failures(report, read_generations(folder))
    atomic_write_text(folder / EVAL_JSON, report.model_dump_json(indent=2) + "\n")
    atomic_write_text(folder / EVAL_MD, render_markdown(report, failures))
    atomic_write_text(folder / EVAL_HTML, render_html(report, failures))
