"""RELIABILITY G1: the dataset is validated when it is registered (`forma register --pairs`).

forma has no job API: the dataset is registered, then `forma train` reads it. So "422 listing the
rows" is `PairsRefused` / `StrictFailure` (CLI: exit 1) with one `file:line: kind /pointer: message`
per bad row, and "nothing is queued" is a registry (schemas, versions, the stored dataset and its
manifest, which training reads) that is byte-identical after a refusal. Without `--strict` the good
rows are kept and every bad one is listed and left out: never stored silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rel_registry import CountingCheck, cpu_and_wall, snapshot
from typer.testing import CliRunner

from finetune.data import DataError, check_lengths, row_lengths
from finetune.model import load_tokenizer
from forma.cli import app
from forma.commands.schemas import DEFAULT_MAX_TOKENS, token_counter
from schemas.dataset import load_dataset
from schemas.errors import PairsRefused
from schemas.pairs import MAX_PAIRS, MAX_PAIRS_BYTES
from schemas.prompt import build_example
from schemas.register import StrictFailure, register
from schemas.worker import GrammarWorker

pytestmark = pytest.mark.slow  # registrations compile on the real grammar worker
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string", "maxLength": 40},
        "total": {"type": "number", "minimum": 0},
        "currency": {"enum": ["EUR", "USD"]},
    },
    "required": ["vendor", "total", "currency"],
    "additionalProperties": False,
}


def row(i: int, **output: Any) -> dict[str, Any]:
    return {
        "input": f"Invoice {i} from Vendor {i}: total {i}.50 EUR.",
        "output": {"vendor": f"Vendor {i}", "total": i + 0.5, "currency": "EUR", **output},
    }


def write_rows(path: Path, rows: list[Any]) -> Path:
    """JSONL: dicts are dumped, bytes and str are written as the line itself."""
    with path.open("wb") as out:
        for item in rows:
            line = (
                item
                if isinstance(item, bytes)
                else (item if isinstance(item, str) else json.dumps(item)).encode()
            )
            out.write(line + b"\n")
    return path


@pytest.fixture(scope="module")
def worker(base_model: Path):
    with GrammarWorker(base_model) as grammar:
        yield grammar


@pytest.fixture
def registry(tmp_path: Path, worker: GrammarWorker) -> Path:
    """A registry that already holds `invoice` with 20 pairs: a refusal must leave it as it was."""
    root = tmp_path / "schemas"
    register(
        root,
        "invoice",
        SCHEMA,
        check=worker.check,
        pairs=[write_rows(tmp_path / "seed.jsonl", [row(i) for i in range(100, 120)])],
    )
    return root


def test_g1_outputs_that_break_the_schema_are_listed_by_file_line_and_pointer(
    registry: Path, worker: GrammarWorker, tmp_path: Path
) -> None:
    """G1: a row whose output breaks the schema is named `pairs.jsonl:17 /output/total`; --strict
    writes nothing; without it the row is left out and listed."""
    rows = [row(i) for i in range(1, 31)]
    rows[16] = row(17, total="12.50")
    rows[22] = row(23, currency="GBP", extra=1)
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    before = snapshot(registry)
    with pytest.raises(StrictFailure) as caught:
        register(registry, "invoice", SCHEMA, check=worker.check, pairs=[path], strict=True)
    assert [i.render() for i in caught.value.issues] == [
        f"{path}:17: invalid /output/total: '12.50' is not of type 'number'",
        f"{path}:23: invalid /output/currency: 'GBP' is not one of ['EUR', 'USD']",
        f"{path}:23: invalid /output: Additional properties are not allowed ('extra' was unexpected)",
    ]
    assert snapshot(registry) == before
    lenient = register(registry, "invoice", SCHEMA, check=worker.check, pairs=[path])
    assert lenient.added == 28 and sorted({i.line for i in lenient.issues}) == [17, 23]
    stored = {p.input for p in load_dataset(registry, "invoice").pairs}
    assert rows[16]["input"] not in stored and rows[22]["input"] not in stored and rows[0]["input"] in stored


def test_g1_duplicates_are_dropped_and_listed_conflicts_refused_under_strict(
    registry: Path, worker: GrammarWorker, tmp_path: Path
) -> None:
    """G1: an exact duplicate (in the file or of a stored pair) is stored once and listed; the same
    input with another output is a conflict, which --strict refuses and the lenient path never stores."""
    rows = [row(1), row(2), row(1), row(100), {**row(2), "output": {**row(2)["output"], "total": 99}}]
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    before = snapshot(registry)
    with pytest.raises(StrictFailure) as caught:
        register(registry, "invoice", SCHEMA, check=worker.check, pairs=[path], strict=True)
    assert [(i.line, i.kind) for i in caught.value.issues] == [(5, "conflict")]
    assert snapshot(registry) == before
    outcome = register(registry, "invoice", SCHEMA, check=worker.check, pairs=[path])
    assert [(i.line, i.kind) for i in outcome.issues] == [(3, "duplicate"), (4, "duplicate"), (5, "conflict")]
    assert "same input and output as pairs.jsonl:1; dropped" in outcome.issues[0].message
    assert "seed.jsonl:1" in outcome.issues[1].message  # the stored pair it repeats
    dataset = load_dataset(registry, "invoice")
    assert outcome.added == 2 and len(dataset.pairs) == 22
    assert [p.output["total"] for p in dataset.pairs if p.input == row(2)["input"]] == [2.5]


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b"", "empty"),
        (b"\n  \n\n", "empty"),
        (b'{"input": "x", "output": {"vendor": 1}}\n[1, 2]\n', "invalid"),
    ],
)
def test_g1_an_empty_set_is_refused_before_any_compile(
    content: bytes, kind: str, registry: Path, worker: GrammarWorker, tmp_path: Path
) -> None:
    """G1: a pairs file with no valid pair (empty, blank, or every row bad) is refused as a whole,
    each row listed, before the schema is even compiled; nothing is stored."""
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(content)
    new_version = {**SCHEMA, "title": "a new version"}
    counting = CountingCheck(worker.check)
    before = snapshot(registry)
    with pytest.raises(PairsRefused) as caught:
        register(registry, "invoice", new_version, check=counting, pairs=[path])
    assert caught.value.summary == "no valid pair in the given file(s); nothing was written"
    issues = caught.value.issues
    if kind == "empty":
        assert [i.render() for i in issues] == [f"{path}:0: empty: the file holds no pairs"]
    else:
        assert {(i.line, i.kind) for i in issues} == {(1, "invalid"), (2, "parse")}
        assert f"{path}:1: invalid /output/vendor: 1 is not of type 'string'" in [i.render() for i in issues]
    assert counting.asked == [] and snapshot(registry) == before


@pytest.fixture(scope="module")
def count_tokens(base_model: Path):
    return token_counter(base_model)


def test_g1_over_long_pairs_are_refused_by_line_with_the_base_tokenizer(
    registry: Path, worker: GrammarWorker, tmp_path: Path, count_tokens: Any, base_model: Path
) -> None:
    """G1: prompt + target over the limit, counted with the base model's tokenizer exactly as the
    trainer counts them, is listed with its line and token count and never stored; --strict refuses
    the file. The trainer's own check (finetune.data.check_lengths, run before any model is loaded)
    agrees on the same pair, so registration catches what training would refuse."""
    long_row = row(7)
    long_row["input"] = "Invoice 7 from Vendor 7. " + "Line item: one widget, unit price 1.00 EUR. " * 60
    path = write_rows(tmp_path / "pairs.jsonl", [row(1), row(2), long_row, row(3)])
    example = build_example("invoice", SCHEMA, long_row["input"].strip(), long_row["output"])
    tokenizer = load_tokenizer(str(base_model))
    tokens = row_lengths(tokenizer, example)[1]
    limit = tokens - 1  # the JSON target, not the prompt alone, takes it over
    assert row_lengths(tokenizer, example)[0] < limit
    before = snapshot(registry)
    with pytest.raises(StrictFailure) as caught:
        register(
            registry,
            "invoice",
            SCHEMA,
            check=worker.check,
            pairs=[path],
            strict=True,
            count_tokens=count_tokens,
            max_tokens=limit,
        )
    assert [(i.line, i.kind) for i in caught.value.issues] == [(3, "too_long")]
    assert (
        f"is {tokens} tokens" in caught.value.issues[0].message
        and f"limit of {limit}" in caught.value.issues[0].message
    )
    assert snapshot(registry) == before
    outcome = register(
        registry,
        "invoice",
        SCHEMA,
        check=worker.check,
        pairs=[path],
        count_tokens=count_tokens,
        max_tokens=limit,
    )
    assert outcome.added == 3 and long_row["input"].strip() not in {
        p.input for p in load_dataset(registry, "invoice").pairs
    }
    with pytest.raises(DataError, match=f"{tokens} tokens, over max_length={limit}"):
        check_lengths(tokenizer, [example], limit, "train")
    check_lengths(tokenizer, [example], tokens, "train")  # at exactly its length both accept it
    assert (
        register(
            registry,
            "invoice",
            SCHEMA,
            check=worker.check,
            pairs=[path],
            count_tokens=count_tokens,
            max_tokens=tokens,
        ).added
        == 1
    )


def test_g1_non_utf8_and_unencodable_text_is_listed_by_line_not_a_crash(
    registry: Path, worker: GrammarWorker, tmp_path: Path
) -> None:
    """G1: bytes that are not UTF-8 are named by line and column (JSONL keeps the other rows; a CSV,
    which must be decoded whole, is refused with the line); a lone-surrogate escape or a NUL in the
    input is an invalid row, not a crash when the dataset is written."""
    latin1 = json.dumps(row(2)).encode().replace(b"Vendor 2", b"Vendor \xe9\xe8 2")
    surrogate = json.dumps(row(3)).replace("Vendor 3", "Vendor \\ud800 3")
    nul = json.dumps(row(4)).replace("Vendor 4", "Vendor \\u0000 4", 1)
    path = write_rows(tmp_path / "pairs.jsonl", [row(1), latin1, surrogate, nul, row(5)])
    outcome = register(registry, "invoice", SCHEMA, check=worker.check, pairs=[path])
    assert [(i.line, i.kind, i.pointer) for i in outcome.issues] == [
        (2, "parse", ""),
        (3, "invalid", "/input"),
        (4, "invalid", "/input"),
    ]
    assert "not UTF-8 text (byte 0xe9 at column" in outcome.issues[0].message
    assert "surrogate" in outcome.issues[1].message and "NUL" in outcome.issues[2].message
    assert outcome.added == 2
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_bytes(b'input,output\n"Ann","{}"\n"Ren\xe9","{}"\n')
    before = snapshot(registry)
    with pytest.raises(PairsRefused) as caught:
        register(registry, "invoice", SCHEMA, check=worker.check, pairs=[csv_path])
    assert [(i.line, i.kind) for i in caught.value.issues] == [(3, "parse")]
    assert snapshot(registry) == before


def test_g1_over_quota_files_are_refused_fast_without_being_read(
    registry: Path, worker: GrammarWorker, tmp_path: Path
) -> None:
    """G1 (10^6 examples, over quota): a file over the byte quota is refused from its size alone (an
    8 GiB sparse file, which reading would take minutes and all the memory); a file of 10^6 rows
    under the byte quota is refused by its line count before any row is parsed (one issue, not a
    million). Nothing is stored, nothing compiled."""
    huge = tmp_path / "huge.jsonl"
    with huge.open("wb") as out:
        out.truncate(8 * 1024**3)
    million = tmp_path / "million.jsonl"
    million.write_bytes(b"{}\n" * 1_000_000)
    assert million.stat().st_size < MAX_PAIRS_BYTES < huge.stat().st_size
    new_version = {**SCHEMA, "title": "quota"}
    counting = CountingCheck(worker.check)
    before = snapshot(registry)
    for path, message in [
        (huge, f"the file is {8 * 1024**3} bytes; the limit is {MAX_PAIRS_BYTES} per file"),
        (million, f"the file has 1000000 lines; the limit is {MAX_PAIRS} pairs per file"),
    ]:
        with cpu_and_wall() as cost, pytest.raises(PairsRefused) as caught:
            register(registry, "invoice", new_version, check=counting, pairs=[path])
        print(
            f"G1 quota {path.name}: refused in {cost['wall'] * 1000:.0f} ms, {cost['cpu'] * 1000:.0f} ms CPU"
        )
        assert [(i.line, i.kind) for i in caught.value.issues] == [(0, "quota")]
        assert message in caught.value.issues[0].message
        assert cost["cpu"] < 2.0
    assert counting.asked == [] and snapshot(registry) == before


def test_g1_cli_lists_every_bad_row_and_writes_nothing(tmp_path: Path, forma_home: Path) -> None:
    """G1 through `forma register --strict`: exit status 1, one `file:line: kind /pointer` line per bad
    row (schema violation, non-UTF-8, over the token limit), and no schema or dataset stored."""
    schema = tmp_path / "invoice.json"
    schema.write_text(json.dumps(SCHEMA))
    long_row = {**row(9), "input": "Invoice 9. " + "Line item: one widget at 1.00 EUR. " * 40}
    latin1 = json.dumps(row(4)).encode().replace(b"Vendor 4", b"Vendor \xff 4")
    rows = [row(1), row(2), row(3), latin1, row(5, total="12.50"), row(6), long_row, row(8)]
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    args = [
        "register",
        "invoice",
        "--schema",
        str(schema),
        "--pairs",
        str(path),
        "--strict",
        "--max-tokens",
        "200",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    out = "".join(result.output.split())
    for line, what in [
        (4, "parse:notUTF-8text"),
        (5, "invalid/output/total:'12.50'isnotoftype'number'"),
        (7, "too_long:"),
    ]:
        assert f"{path}:{line}:{what}" in out, result.output
    assert "3badpair(s);--strict:nothingwaswritten" in out
    assert snapshot(forma_home / "schemas") == {}
    assert DEFAULT_MAX_TOKENS == 1024  # the trainer's default max_length (TrainConfig)
