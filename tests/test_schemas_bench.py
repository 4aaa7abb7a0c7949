"""Issue #3 point 8: every real-world schema of jsonschemabench is accepted or refused with a reason.

One grammar worker serves all 250 (importing vLLM per schema would take an hour). The table of
acceptance per category is printed (`pytest -s`) and written to `$FORMA_BENCH_TABLE` if set.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from schemas.checks import check_schema, parse_schema_text
from schemas.errors import SchemaError
from schemas.register import register
from schemas.registry import load_schema
from schemas.worker import CHECK_TIMEOUT_S, GrammarWorker

BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "jsonschemabench"


def _rows() -> list[dict]:
    return [json.loads(line) for line in (BENCH / "manifest.jsonl").read_text().splitlines() if line]


@pytest.mark.slow
@pytest.mark.skipif(not BENCH.exists(), reason="jsonschemabench sample not present")
def test_every_benchmark_schema_is_accepted_or_refused_with_a_reason(
    base_model: Path, tmp_path: Path
) -> None:
    table: dict[str, Counter] = defaultdict(Counter)
    reasons: Counter = Counter()
    refusals: list[str] = []
    root = tmp_path / "schemas"
    with GrammarWorker(base_model) as worker:
        for i, row in enumerate(_rows()):
            start = time.perf_counter()
            name = f"bench-{i}"
            try:
                schema = parse_schema_text((BENCH / row["file"]).read_text(encoding="utf-8"))
                register(root, name, schema, check=worker.check, source=row["file"])
            except SchemaError as err:
                assert err.code and err.message and err.pointer is not None, row["file"]
                assert "Fix:" in str(err), str(err)
                table[row["category"]]["refused"] += 1
                reasons[err.code] += 1
                refusals.append(f"- {row['file'].split('/')[-1]}: {str(err)[:200]}")
            else:
                stored = load_schema(root, name)
                assert stored.json_schema == check_schema(schema)
                table[row["category"]]["accepted"] += 1
                table[row["category"]][stored.backend] += 1
            # the worker's kill bound plus a margin for restarting it
            assert time.perf_counter() - start < CHECK_TIMEOUT_S + 60, row["file"]
    lines = ["| category | accepted | refused | xgrammar | llguidance |", "|---|---|---|---|---|"]
    for category in sorted(table):
        c = table[category]
        lines.append(f"| {category} | {c['accepted']} | {c['refused']} | {c['xgrammar']} | {c['guidance']} |")
    lines.append(f"refusals by reason: {dict(reasons)}")
    print("\n".join(lines))
    if os.environ.get("FORMA_BENCH_TABLE"):
        Path(os.environ["FORMA_BENCH_TABLE"]).write_text("\n".join(lines + refusals) + "\n")
    assert sum(c["accepted"] + c["refused"] for c in table.values()) == 250
