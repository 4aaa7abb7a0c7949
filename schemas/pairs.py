"""Reading a user's pairs file: JSONL or CSV lines -> normalised, validated pairs with line numbers.

Every bad line becomes a `PairIssue` naming file, line, JSON pointer and message; nothing is dropped
without being listed. Duplicates and conflicts are decided later, against the stored dataset.

A file over the quota (bytes, then lines) is refused as a whole before any line is parsed, and bytes
that are not UTF-8 are reported on their own line (RELIABILITY G1).
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

from schemas.errors import PairIssue, PairsRefused
from schemas.validation import output_errors

MAX_PAIRS_BYTES = 64 * 1024 * 1024  # per file: ~100k pairs of a few hundred tokens each
MAX_PAIRS = 100_000  # lines per file; LoRA on one schema needs thousands, not millions

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


def _records(path: Path, data: bytes) -> tuple[list[tuple[int, Any]], list[PairIssue]]:
    """(line, record) per non-empty record, and an issue per line that is not UTF-8."""
    if path.suffix.lower() == ".csv":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:  # the CSV reader needs the whole text: the file is refused
            line = data[: err.start].count(b"\n") + 1
            return [], [
                _not_utf8(str(path), line, data[err.start], err.start - data.rfind(b"\n", 0, err.start))
            ]
        reader = csv.DictReader(io.StringIO(text, newline=""))
        out: list[tuple[int, Any]] = []
        line = 2  # line 1 is the header
        for row in reader:
            out.append((line, _csv_record(row)))
            line = reader.line_num + 1
        return out, []
    records, issues = [], []
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            issues.append(_not_utf8(str(path), n, raw[err.start], err.start + 1))
            continue
        if text.strip():
            records.append((n, text))
    return records, issues


def _not_utf8(file: str, line: int, byte: int, column: int) -> PairIssue:
    return PairIssue(
        file=file,
        line=line,
        kind="parse",
        message=f"not UTF-8 text (byte 0x{byte:02x} at column {column}); save the file as UTF-8",
    )


def _quota(path: Path) -> bytes:
    """The file's bytes, after refusing one over the byte quota (from its size: nothing is read) or
    over the line quota (before any line is parsed)."""
    size = path.stat().st_size
    if size > MAX_PAIRS_BYTES:
        issue = f"the file is {size} bytes; the limit is {MAX_PAIRS_BYTES} per file"
    else:
        data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM, as Excel writes CSV
        lines = data.count(b"\n") + (not data.endswith(b"\n"))
        if lines <= MAX_PAIRS:
            return data
        issue = f"the file has {lines} lines; the limit is {MAX_PAIRS} pairs per file"
    raise PairsRefused(
        f"{path}: over the quota; nothing was parsed or written",
        [PairIssue(file=str(path), line=0, kind="quota", message=f"{issue}; split it or sample it")],
    )


def _not_json(name: str) -> None:
    """Python's parser takes NaN and Infinity; JSON (and the stored dataset) does not."""
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


def _csv_record(row: dict[str, Any]) -> Any:
    if "input" not in row or "output" not in row:
        return PairIssue(file="", line=0, kind="parse", message="CSV needs an `input` and an `output` column")
    try:
        return {"input": row["input"], "output": json.loads(row["output"] or "", parse_constant=_not_json)}
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
        value = json.loads(raw, parse_constant=_not_json)
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
    if "\x00" in record["input"]:  # the gateway refuses such text, so the model must never learn it
        return [issue("/input", "`input` contains a NUL character; remove it")]
    for pointer, value in (("/input", record["input"]), ("/output", record["output"])):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return [issue(pointer, "holds a lone UTF-16 surrogate escape (e.g. \\ud800): not Unicode text")]
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
    """Every valid pair of a JSONL or CSV file, and a PairIssue for every line that is not.

    Raises PairsRefused for a file over the quota.
    """
    pairs: list[RawPair] = []
    try:
        data = _quota(path)
    except OSError as err:
        return [], [PairIssue(file=str(path), line=0, kind="parse", message=f"cannot read the file: {err}")]
    records, issues = _records(path, data)
    for line, raw in records:
        record = _parse(raw, str(path), line)
        if isinstance(record, PairIssue):
            issues.append(record)
            continue
        checked = check_record(record, schema, str(path), line)
        if isinstance(checked, list):
            issues.extend(checked)
        else:
            pairs.append(checked)
    issues.sort(key=lambda i: i.line)
    return pairs, issues
