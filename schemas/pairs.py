"""Reading a user's pairs file: JSONL or CSV lines -> normalised, validated pairs with line numbers.

Every bad line becomes a `PairIssue` naming file, line, JSON pointer and message; nothing is dropped
without being listed. Duplicates and conflicts are decided later, against the stored dataset.
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from schemas.errors import PairIssue
from schemas.validation import output_errors

_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class RawPair(BaseModel):
    """One pair as read, before dedup: where it came from, its normalised input and its output."""

    model_config = ConfigDict(extra="forbid")

    input: str
    output: dict[str, Any]
    file: str
    line: int
    synthetic: bool = False


def normalise_input(text: str) -> str:
    """NFC, unified line ends, runs of spaces collapsed, blank-line runs capped, ends trimmed.

    Line breaks are kept: a document's layout (an invoice's lines) carries meaning for the model.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _records(path: Path, text: str) -> list[tuple[int, Any]]:
    """(line, record) per non-empty record; a record that cannot be parsed is a PairIssue."""
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        out: list[tuple[int, Any]] = []
        line = 2  # line 1 is the header
        for row in reader:
            out.append((line, _csv_record(row)))
            line = reader.line_num + 1
        return out
    return [(n, raw) for n, raw in enumerate(text.split("\n"), 1) if raw.strip()]


def _csv_record(row: dict[str, Any]) -> Any:
    if "input" not in row or "output" not in row:
        return PairIssue(file="", line=0, kind="parse", message="CSV needs an `input` and an `output` column")
    try:
        return {"input": row["input"], "output": json.loads(row["output"] or "")}
    except json.JSONDecodeError as err:
        return PairIssue(
            file="",
            line=0,
            kind="parse",
            pointer="/output",
            message=f"the output column is not JSON ({err.msg}); write the output object as JSON",
        )


def _parse(raw: Any, file: str, line: int) -> dict[str, Any] | PairIssue:
    if isinstance(raw, PairIssue):
        return raw.model_copy(update={"file": file, "line": line})
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as err:
        msg = getattr(err, "msg", "nested too deeply")
        return PairIssue(
            file=file,
            line=line,
            kind="parse",
            message=f"not valid JSON ({msg}); write one JSON object per line",
        )
    if not isinstance(value, dict):
        return PairIssue(
            file=file,
            line=line,
            kind="parse",
            message='a line must be an object {"input": ..., "output": {...}}',
        )
    return value


def check_record(
    record: dict[str, Any], schema: dict[str, Any], file: str, line: int
) -> RawPair | list[PairIssue]:
    """A parsed record -> a valid pair, or every problem it has (unknown keys, types, schema errors)."""

    def issue(pointer: str, message: str) -> PairIssue:
        return PairIssue(file=file, line=line, kind="invalid", pointer=pointer, message=message)

    extra = sorted(set(record) - {"input", "output"})
    if extra:
        return [issue(f"/{extra[0]}", f"unknown key {extra[0]!r}; a pair has only `input` and `output`")]
    if not isinstance(record.get("input"), str) or not record["input"].strip():
        return [issue("/input", "`input` must be a non-empty string")]
    if not isinstance(record.get("output"), dict):
        return [issue("/output", "`output` must be a JSON object matching the schema")]
    errors = output_errors(schema, record["output"])
    if errors:
        return [issue(f"/output{e.pointer}", e.message) for e in errors]
    return RawPair(input=normalise_input(record["input"]), output=record["output"], file=file, line=line)


def file_synthetic(checked: RawPair | list[PairIssue], pairs: list[RawPair], issues: list[PairIssue]) -> None:
    """File one checked generated record: a valid one as a pair marked synthetic, else its issues."""
    if isinstance(checked, list):
        issues.extend(checked)
    else:
        pairs.append(checked.model_copy(update={"synthetic": True}))


def read_pairs(path: Path, schema: dict[str, Any]) -> tuple[list[RawPair], list[PairIssue]]:
    """Every valid pair of a JSONL or CSV file, and a PairIssue for every line that is not."""
    pairs: list[RawPair] = []
    issues: list[PairIssue] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return [], [PairIssue(file=str(path), line=0, kind="parse", message=f"cannot read the file: {err}")]
    for line, raw in _records(path, text):
        record = _parse(raw, str(path), line)
        if isinstance(record, PairIssue):
            issues.append(record)
            continue
        checked = check_record(record, schema, str(path), line)
        if isinstance(checked, list):
            issues.extend(checked)
        else:
            pairs.append(checked)
    return pairs, issues
