"""eval.html: one self-contained page (inline CSS and SVG) a person can open from the run folder."""

from __future__ import annotations

import json
from html import escape

from evals.evaluate import EvalReport
from evals.report_md import LATENCY_NOTE, summary_rows
from evals.reports import ROLES, Failure

COLORS = {"candidate": "#2563eb", "base": "#9ca3af", "live": "#f59e0b"}
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#111827;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #e5e7eb;padding-bottom:4px}
table{border-collapse:collapse;font-size:12.5px}td,th{border:1px solid #e5e7eb;padding:3px 7px;text-align:right}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}
.legend span{display:inline-block;margin-right:14px}.sw{width:11px;height:11px;display:inline-block;margin-right:4px}
.fail{display:grid;grid-template-columns:1fr 1fr 1fr;gap:8px;margin:10px 0 18px}
.fail div{background:#f9fafb;border:1px solid #e5e7eb;padding:6px;overflow-wrap:anywhere;white-space:pre-wrap;
font:12px ui-monospace,monospace}.fail b{font:600 12px system-ui}.bad{color:#b91c1c}.muted{color:#6b7280}
"""


def bar_chart(title: str, groups: dict[str, dict[str, float]]) -> str:
    """Horizontal grouped bars, one group per label, one bar per model, values in 0..1."""
    label_w, bar_w, bar_h = 260, 520, 12
    roles = [r for r in ROLES if any(r in bars for bars in groups.values())]
    height = sum(len(roles) * bar_h + 10 for _ in groups) + 10
    parts = [
        f'<svg role="img" aria-label="{escape(title)}" width="{label_w + bar_w + 70}" height="{height}">'
    ]
    y = 5
    for label, bars in groups.items():
        mid = y + len(roles) * bar_h / 2 + 4
        parts.append(
            f'<text x="{label_w - 6}" y="{mid}" text-anchor="end" font-size="12">{escape(label)}</text>'
        )
        for role in roles:
            value = bars.get(role)
            if value is not None:
                width = max(value * bar_w, 1)
                parts.append(
                    f'<rect x="{label_w}" y="{y}" width="{width:.1f}" height="{bar_h - 2}" fill="{COLORS[role]}">'
                    f"<title>{role}: {100 * value:.1f}%</title></rect>"
                    f'<text x="{label_w + width + 4:.1f}" y="{y + bar_h - 3}" font-size="10">{100 * value:.0f}%</text>'
                )
            y += bar_h
        y += 10
    parts.append("</svg>")
    return "".join(parts)


def validity_groups(report: EvalReport) -> dict[str, dict[str, float]]:
    groups: dict[str, dict[str, float]] = {}
    for role, modes in report.metrics.items():
        for mode, m in modes.items():
            groups.setdefault(f"schema-valid, {mode}", {})[role] = m.valid_rate
            groups.setdefault(f"field F1, {mode}", {})[role] = m.f1
    return groups


def field_groups(report: EvalReport, mode: str = "constrained") -> dict[str, dict[str, float]]:
    groups: dict[str, dict[str, float]] = {}
    for role, modes in report.metrics.items():
        for field, acc in modes[mode].field_accuracy.items():
            groups.setdefault(field, {})[role] = acc["accuracy"]
    return dict(sorted(groups.items()))


def markdown_table(rows: list[str]) -> str:
    """The summary rows shared with eval.md, as an HTML table."""
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows if not row.startswith("|---")]
    head = "".join(f"<th>{escape(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _pretty(text: str) -> str:
    """The output re-indented like `expected` when it parses, so the two columns line up; else as is."""
    try:
        return json.dumps(json.loads(text), ensure_ascii=False, indent=1)
    except ValueError:
        return text


def failure_cards(failures: list[Failure]) -> str:
    if not failures:
        return "<p>None: every output matched exactly.</p>"
    cards = []
    for f in failures:
        got = escape(_pretty(f.got) if f.finish_reason != "length" else f.got) + (
            ' <span class="bad">(truncated at max_tokens)</span>' if f.finish_reason == "length" else ""
        )
        errors = "; ".join(f"{p}: {m}" for p, m in f.errors)
        cards.append(
            f"<h3>pair {f.pair} <span class='muted'>differs at: {escape(', '.join(f.wrong_fields) or '-')}</span></h3>"
            + (f"<p class='bad'>schema errors: {escape(errors)}</p>" if errors else "")
            + '<div class="fail">'
            + f"<div><b>input</b>\n{escape(f.input)}</div>"
            + f"<div><b>expected</b>\n{escape(json.dumps(f.expected, ensure_ascii=False, indent=1))}</div>"
            + f"<div><b>got</b>\n{got}</div></div>"
        )
    return "".join(cards)


def render_html(report: EvalReport, failures: list[Failure]) -> str:
    legend = "".join(
        f'<span><i class="sw" style="background:{COLORS[r]}"></i>{r}</span>'
        for r in ROLES
        if r in report.metrics
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>forma eval {escape(report.run_id)}</title><style>{CSS}</style></head><body>
<h1>Eval of run {escape(report.run_id)}</h1>
<p>Schema <code>{escape(report.schema_name)}</code> version <code>{escape(report.schema_version)}</code>;
{report.n_pairs} pairs from {escape(report.source)}; engine {escape(report.engine)}; {escape(report.created_at)}.
Only schema-valid outputs count for field scores; an output cut off at max_tokens is invalid.</p>
{f'<p class="bad">Live release not compared: {escape(report.live_skipped)}</p>' if report.live_skipped else ""}
<p class="legend">{legend}</p>
<h2>Validity and field F1</h2>{bar_chart("validity", validity_groups(report))}
<h2>Per-field accuracy (constrained)</h2>{bar_chart("per-field accuracy", field_groups(report))}
<h2>All metrics</h2>{markdown_table(summary_rows(report))}<p class="muted">{escape(LATENCY_NOTE)}</p>
<h2>Worst failures (candidate, constrained)</h2>{failure_cards(failures)}
</body></html>
"""
