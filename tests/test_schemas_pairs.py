"""Pairs files, dedup, conflicts, splits and the dataset manifest (issue #3 points 2-3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.dataset import load_dataset, merge_pairs, read_pairs_file, split_of, write_dataset
from schemas.errors import RegistryError
from schemas.pairs import normalise_input, read_pairs
from schemas.validation import output_errors

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "priority": {"enum": ["low", "high"]},
        "email": {"type": "string", "format": "email"},
    },
    "required": ["name", "priority"],
    "additionalProperties": False,
}


def pair(i: int, **output: object) -> dict:
    return {
        "input": f"Ticket {i} from Person{i}",
        "output": {"name": f"Person{i}", "priority": "low", **output},
    }


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_invalid_pair_at_line_37_is_reported_with_file_line_pointer_message(tmp_path: Path) -> None:
    rows = [pair(i) for i in range(1, 41)]
    rows[36] = pair(37, priority="urgent")
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    pairs, issues = read_pairs(path, SCHEMA)
    assert len(pairs) == 39
    assert [i.render() for i in issues] == [
        f"{path}:37: invalid /output/priority: 'urgent' is not one of ['low', 'high']"
    ]


@pytest.mark.parametrize(
    ("line", "pointer", "message"),
    [
        ('{"input": "x", "output": ', "", "not valid JSON (Expecting value); write one JSON object per line"),
        ("[1, 2]", "", 'a line must be an object {"input": ..., "output": {...}}'),
        ('{"input": "", "output": {}}', "/input", "`input` must be a non-empty string"),
        ('{"input": "x", "output": []}', "/output", "`output` must be a JSON object matching the schema"),
        (
            '{"input": "x", "output": {"name": "a", "priority": "low"}, "id": 3}',
            "/id",
            "unknown key 'id'; a pair has only `input` and `output`",
        ),
        (
            '{"input": "x", "output": {"name": "a", "priority": "low", "email": "not-an-email"}}',
            "/output/email",
            "'not-an-email' is not a 'email'",
        ),
        ('{"input": "x", "output": {"priority": "low"}}', "/output", "'name' is a required property"),
    ],
)
def test_each_kind_of_bad_line(tmp_path: Path, line: str, pointer: str, message: str) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [pair(1), line])
    pairs, issues = read_pairs(path, SCHEMA)
    assert len(pairs) == 1
    assert [(i.line, i.pointer, i.message) for i in issues] == [(2, pointer, message)]


def test_csv_pairs_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text(
        'input,output\n"Hello, Ann","{""name"": ""Ann"", ""priority"": ""low""}"\n'
        '"multi\nline",{"name": 1}\nBob,not json\n'
    )
    pairs, issues = read_pairs(path, SCHEMA)
    assert [p.input for p in pairs] == ["Hello, Ann"]
    assert next((i.line, i.kind, i.pointer) for i in issues) == (3, "invalid", "/output/name")
    assert (issues[-1].line, issues[-1].kind, issues[-1].pointer) == (5, "parse", "/output")


def test_inputs_are_normalised() -> None:
    assert normalise_input("  Cafe\u0301   au\tlait \r\n\r\n\r\n\r\nbye  ") == "Caf\u00e9 au lait\n\nbye"


def test_duplicates_are_dropped_and_conflicts_reported(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            pair(1),
            pair(2),
            pair(1),
            {**pair(2), "output": {"name": "Other", "priority": "high"}},
            {"input": "Ticket 1  from Person1", "output": pair(1)["output"]},
        ],
    )
    raw, issues = read_pairs(path, SCHEMA)
    assert issues == []
    merged, found = merge_pairs([], raw, SCHEMA)
    assert [p.output["name"] for p in merged] == ["Person1", "Person2"]
    assert [(i.line, i.kind) for i in found] == [(3, "duplicate"), (4, "conflict"), (5, "duplicate")]
    assert found[1].message == "same input as p.jsonl:2 with a different output; keep one of them"


def test_splits_are_stable_and_disjoint(tmp_path: Path) -> None:
    first = [pair(i) for i in range(200)]
    more = [pair(i) for i in range(200, 400)]
    raw1, _ = read_pairs(write_jsonl(tmp_path / "a.jsonl", first), SCHEMA)
    raw2, _ = read_pairs(write_jsonl(tmp_path / "b.jsonl", more), SCHEMA)
    old, _ = merge_pairs([], raw1, SCHEMA)
    grown, _ = merge_pairs(old, raw2, SCHEMA)
    assert {p.id: p.split for p in grown if p.id in {q.id for q in old}} == {p.id: p.split for p in old}
    assert all(p.split == split_of(p.input) for p in grown)
    by_input: dict[str, set] = {}
    for p in grown:
        by_input.setdefault(p.input, set()).add(p.split)
    assert all(len(s) == 1 for s in by_input.values())
    counts = {s: sum(p.split == s for p in grown) for s in ("train", "val", "test")}
    assert 0.7 < counts["train"] / 400 < 0.9 and counts["val"] > 10 and counts["test"] > 10


def test_manifest_counts_hash_coverage_and_tamper_check(tmp_path: Path) -> None:
    rows = [pair(i, **({"email": f"p{i}@example.com"} if i < 3 else {})) for i in range(60)]
    raw, _ = read_pairs(write_jsonl(tmp_path / "p.jsonl", rows), SCHEMA)
    merged, _ = merge_pairs([], raw, SCHEMA)
    root = tmp_path / "schemas"
    manifest = write_dataset(root, "demo", "v1", SCHEMA, merged)
    assert sum(manifest.counts.values()) == 60
    entries = {(c.field, c.kind, c.value): c.counts for c in manifest.coverage}
    assert sum(entries[("/priority", "enum", "low")].values()) == 60
    assert sum(entries[("/priority", "enum", "high")].values()) == 0
    assert sum(entries[("/email", "optional", None)].values()) == 3
    assert '/priority = "high": no pair in the test split' in manifest.warnings
    dataset = load_dataset(root, "demo")
    assert dataset.manifest.sha256 == manifest.sha256
    assert {p.split for p in dataset.split("test")} <= {"test"}
    assert read_pairs_file(root, "demo") == dataset.pairs
    assert all(output_errors(SCHEMA, p.output) == [] for p in dataset.pairs)
    path = root / "demo" / "dataset" / "pairs.jsonl"
    path.write_text(path.read_text().replace("Person1", "Mallory"))
    with pytest.raises(RegistryError, match="does not match the sha256"):
        load_dataset(root, "demo")


def test_load_dataset_of_unknown_name_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="forma register nobody"):
        load_dataset(tmp_path, "nobody")
