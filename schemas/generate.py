"""Synthetic pairs: sample valid outputs, render inputs from the Jinja templates kept beside the schema.

Outputs come from `schemas.sampler` (realistic values, seeded) or, for schemas it cannot walk, from
hypothesis-jsonschema. Every generated pair then goes through the same check as a user's pair
(`check_record`) before it may be stored, and is marked synthetic.
"""

from __future__ import annotations

import contextlib
import json
import random
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import jinja2

from schemas.errors import PairIssue
from schemas.pairs import RawPair, check_record, file_synthetic
from schemas.realistic import _fake
from schemas.sampler import Unsampleable, sample
from schemas.validation import validator_for_schema

FALLBACK_TEMPLATE = "{% for key, value in o.items() %}{{ key }}: {{ value | tojson }}\n{% endfor %}"


def load_templates(folder: Path | None) -> list[jinja2.Template]:
    """The schema's templates (`*.j2`, sorted by name), or one plain key: value template if none."""
    env = jinja2.Environment(
        keep_trailing_newline=False, autoescape=False, trim_blocks=True, lstrip_blocks=True
    )
    files = sorted(folder.glob("*.j2")) if folder and folder.exists() else []
    return [env.from_string(f.read_text(encoding="utf-8")) for f in files] or [
        env.from_string(FALLBACK_TEMPLATE)
    ]


def load_vocab(folder: Path | None) -> dict[str, Any]:
    """`vocab.json` beside the templates (phrases the templates pick from), or {}."""
    path = folder / "vocab.json" if folder else None
    return json.loads(path.read_text(encoding="utf-8")) if path and path.exists() else {}


def hypothesis_outputs(schema: dict[str, Any], n: int, seed: int) -> list[Any]:
    """`n` instances from hypothesis-jsonschema, for schemas the walker cannot sample."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fix_seed
    from hypothesis_jsonschema import from_schema

    drawn: list[Any] = []

    @fix_seed(seed)
    @settings(
        max_examples=max(n * 3, 10),
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(from_schema(schema))
    def collect(value: Any) -> None:
        if len(drawn) < n and value not in drawn:
            drawn.append(value)

    # hypothesis-jsonschema 0.23 breaks on some object schemas with hypothesis 6.170: keep what was drawn.
    with contextlib.suppress(Exception):
        collect()
    return drawn


def sample_outputs(schema: dict[str, Any], n: int, rng: random.Random, seed: int) -> list[Any]:
    validator = validator_for_schema(schema)
    out: list[Any] = []
    try:
        for _ in range(n * 3):
            value = sample(schema, rng)
            if validator.is_valid(value):
                out.append(value)
            if len(out) == n:
                return out
    except (Unsampleable, RecursionError):
        pass
    return out + hypothesis_outputs(schema, n - len(out), seed)


def render_context(
    output: dict[str, Any], rng: random.Random, vocab: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a template sees: `o` (the output), `v` (vocab.json), `pick`, `maybe`, `chance`, `fake`, `money`."""
    return {
        "o": output,
        "v": vocab or {},
        "pick": lambda *options: rng.choice(options[0] if len(options) == 1 else options),
        "maybe": lambda text, p=0.5: text if rng.random() < p else "",
        "chance": lambda p=0.5: rng.random() < p,
        "fake": _fake(rng),
        "money": lambda x: f"{x:,.2f}",
        # Faker's own dates are relative to today, which would make seeded pairs change over time.
        "day": lambda: (date(2020, 1, 1) + timedelta(days=rng.randrange(2190))).isoformat(),
        "dump": lambda x: json.dumps(x, ensure_ascii=False),
    }


def synthesize(
    schema: dict[str, Any],
    templates: list[jinja2.Template],
    n: int,
    seed: int = 0,
    label: str = "generated",
    vocab: dict[str, Any] | None = None,
) -> tuple[list[RawPair], list[PairIssue]]:
    """`n` synthetic pairs (fewer if some fail validation; those are returned as issues)."""
    rng = random.Random(seed)
    pairs: list[RawPair] = []
    issues: list[PairIssue] = []
    for i, output in enumerate(sample_outputs(schema, n, rng, seed), 1):
        template = templates[rng.randrange(len(templates))]
        text = template.render(**render_context(output, rng, vocab))
        checked = check_record({"input": text, "output": output}, schema, label, i)
        file_synthetic(checked, pairs, issues)
    return pairs, issues
