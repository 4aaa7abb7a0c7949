"""Rebuild the bundled examples' pairs.jsonl: `python -m schemas.examples.build` (seeded, reproducible).

Outputs come from the domain samplers in `samplers.py`; inputs are rendered from each example's Jinja
templates with `schemas.generate`, so the committed pairs are exactly what this script writes.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from faker import Faker

from schemas.examples.samplers import SAMPLERS
from schemas.fileio import atomic_write_text
from schemas.generate import load_templates, load_vocab, render_context
from schemas.pairs import check_record

HERE = Path(__file__).resolve().parent
PAIRS = 320
SEED = 3


def build(name: str, n: int = PAIRS, seed: int = SEED) -> list[dict]:
    folder = HERE / name
    schema = json.loads((folder / "schema.json").read_text(encoding="utf-8"))
    templates, vocab = load_templates(folder / "templates"), load_vocab(folder / "templates")
    rng, fake = random.Random(seed), Faker("en_US")
    fake.seed_instance(seed)
    rows: dict[str, dict] = {}
    while len(rows) < n:
        output = SAMPLERS[name](rng, fake)
        text = templates[rng.randrange(len(templates))].render(**render_context(output, rng, vocab))
        checked = check_record({"input": text, "output": output}, schema, name, len(rows) + 1)
        if isinstance(checked, list):
            raise SystemExit("\n".join(issue.render() for issue in checked))
        rows.setdefault(checked.input, {"input": checked.input, "output": output})
    return list(rows.values())


def main(names: list[str]) -> None:
    for name in names or sorted(SAMPLERS):
        rows = build(name)
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        atomic_write_text(HERE / name / "pairs.jsonl", text)
        print(f"{name}: {len(rows)} pairs")


if __name__ == "__main__":
    main(sys.argv[1:])
