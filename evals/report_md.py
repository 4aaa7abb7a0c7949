"""eval.md: the eval report as Markdown tables."""

from __future__ import annotations

import json

from evals.evaluate import EvalReport
from evals.reports import ROLES, Failure

LATENCY_NOTE = (
    "Latency is per request, from being scheduled to its last token, with every request of the eval in flight "
    "at once (vllm) or one at a time (hf): compare it between models, not with serving latency (see bench/)."
)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def summary_rows(report: EvalReport) -> list[str]:
    rows = [
        "| model | mode | parse | valid | truncated | exact | precision | recall | field F1 | p50 s | p95 s | tok/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for role in ROLES:
        for mode, m in report.metrics.get(role, {}).items():
            rows.append(
                f"| {role} | {mode} | {_pct(m.parse_rate)} | {_pct(m.valid_rate)} | {_pct(m.truncated_rate)} | "
                f"{_pct(m.exact_match)} | {m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} | "
                f"{m.latency_p50_s:.3f} | {m.latency_p95_s:.3f} | {m.tokens_per_s:.1f} |"
            )
    return rows


def field_rows(report: EvalReport, mode: str = "constrained") -> list[str]:
    roles = [r for r in ROLES if r in report.metrics]
    fields = sorted({f for r in roles for f in report.metrics[r][mode].field_accuracy})
    rows = ["| field | " + " | ".join(roles) + " |", "|---|" + "---|" * len(roles)]
    for field in fields:
        cells = []
        for role in roles:
            acc = report.metrics[role][mode].field_accuracy.get(field)
            cells.append(f"{_pct(acc['accuracy'])} (n={int(acc['n'])})" if acc else "-")
        rows.append(f"| `{field}` | " + " | ".join(cells) + " |")
    return rows


def confusion_rows(report: EvalReport, mode: str = "constrained") -> list[str]:
    rows: list[str] = []
    for field, table in report.metrics.get("candidate", {}).get(mode).enum_confusion.items():  # type: ignore[union-attr]
        rows += ["", f"`{field}` (rows: expected, columns: predicted)", ""]
        columns = sorted({p for row in table.values() for p in row} | set(table))
        rows += ["| expected | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        rows += [
            f"| {e} | " + " | ".join(str(table[e].get(c, 0)) for c in columns) + " |" for e in sorted(table)
        ]
    return rows


def failure_rows(failures: list[Failure]) -> list[str]:
    rows = ["| pair | input | expected | got | differing fields |", "|---|---|---|---|---|"]
    for f in failures:
        got = f.got if f.finish_reason != "length" else f"{f.got} (truncated)"
        cells = [
            str(f.pair),
            f.input,
            json.dumps(f.expected, ensure_ascii=False),
            got,
            ", ".join(f.wrong_fields),
        ]
        rows.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return rows


def render_markdown(report: EvalReport, failures: list[Failure]) -> str:
    lines = [
        f"# Eval: run {report.run_id}",
        "",
        f"Schema `{report.schema_name}` version `{report.schema_version}`, {report.n_pairs} pairs from "
        f"{report.source}, engine {report.engine}, max_tokens {report.max_tokens}, {report.created_at}.",
        "Only schema-valid outputs count for exact match and field scores; a truncated output is invalid.",
        LATENCY_NOTE,
        *([f"**Live release not compared:** {report.live_skipped}"] if report.live_skipped else []),
        "",
        "## Validity and accuracy",
        "",
        *summary_rows(report),
        "",
        "## Per-field accuracy (constrained)",
        "",
        *field_rows(report),
        "",
        "## Enum confusion (candidate, constrained)",
        *(confusion_rows(report) or ["", "The schema has no enum fields."]),
        "",
        "## Worst failures (candidate, constrained)",
        "",
        *(failure_rows(failures) if failures else ["None: every output matched exactly."]),
    ]
    return "\n".join(lines) + "\n"
