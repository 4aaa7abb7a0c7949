"""`register`: a schema (+ pairs, instructions, templates) in, a stored version and dataset out.

Everything is checked and computed in memory first; only then, under the name's lock, is anything
written. So a refusal (a bad schema, an empty or over-quota pairs file, `strict=True` with any bad
pair) writes nothing, and a crash never leaves half a version.

The grammar check is the expensive step (a compile in a killable worker), so its report is reused for
a schema already registered under any name: versions are content hashes (RELIABILITY A5).
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from schemas.canonical import schema_hash
from schemas.checks import check_schema, parse_schema_text
from schemas.dataset import DatasetManifest, Pair, merge_pairs, read_pairs_file, write_dataset
from schemas.errors import PairIssue, PairsRefused, RegistryError, SchemaError
from schemas.fileio import staged_dir
from schemas.pairs import RawPair, check_record, read_pairs
from schemas.registry import check_name, name_lock, read_index, store_version, version_of
from schemas.report import GrammarReport, RegistrationReport

GrammarCheck = Callable[[dict[str, Any]], GrammarReport]
# (name, schema, instructions, pairs) -> prompt + target tokens of each pair, as the trainer counts them.
TokenCounter = Callable[[str, dict[str, Any], str | None, list[RawPair]], list[int]]


class StrictFailure(PairsRefused):
    """`--strict` and at least one bad pair: nothing was written."""

    def __init__(self, issues: list[PairIssue]) -> None:
        super().__init__(f"{len(issues)} bad pair(s); --strict: nothing was written", issues)


class RegisterOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    changed: bool
    report: RegistrationReport
    added: int = 0
    issues: list[PairIssue] = []
    manifest: DatasetManifest | None = None


def read_schema_source(spec: str) -> tuple[dict[str, Any], str]:
    """FILE (a JSON Schema document) or `module:Class` (a pydantic model) -> (schema, source)."""
    path = Path(spec)
    if ":" in spec and not path.exists():
        module_name, _, class_name = spec.partition(":")
        sys.path.insert(0, str(Path.cwd()))
        try:
            model = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as err:
            raise SchemaError(
                "bad_model",
                f"cannot import {spec!r}: {err}",
                None,
                "give module:Class of a pydantic model importable from here",
            ) from None
        finally:
            sys.path.pop(0)
        if not hasattr(model, "model_json_schema"):
            raise SchemaError(
                "bad_model", f"{spec} is not a pydantic model", None, "subclass pydantic.BaseModel"
            )
        return model.model_json_schema(), spec
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SchemaError(
            "unreadable", f"cannot read {spec}: {err}", None, "give a JSON Schema file", spec
        ) from None
    try:
        return parse_schema_text(text), str(path)
    except SchemaError as err:
        err.file = str(path)
        raise SchemaError(err.code, err.message, err.pointer, err.fix, str(path)) from None


def cached_report(root: Path, name: str, schema: dict[str, Any]) -> RegistrationReport | None:
    """The stored report of this exact schema (same sha256), under this name or any other."""
    version, sha256 = version_of(schema), schema_hash(schema)
    own = root / name / "versions" / version / "report.json"
    for path in [own, *sorted(root.glob(f"*/versions/{version}/report.json"))]:
        if path.exists():
            report = RegistrationReport.model_validate_json(path.read_text(encoding="utf-8"))
            if report.schema_sha256 == sha256:
                return report.model_copy(update={"name": name})
    return None


def grammar_report(root: Path, name: str, schema: dict[str, Any], check: GrammarCheck) -> RegistrationReport:
    """Reuse the stored report of an already-registered schema; compile and probe otherwise."""
    cached = cached_report(root, name, schema)
    if cached is not None:
        return cached
    return RegistrationReport(
        name=name, version=version_of(schema), schema_sha256=schema_hash(schema), grammar=check(schema)
    )


def _revalidated(stored: list[Pair], schema: dict[str, Any]) -> tuple[list[RawPair], list[PairIssue]]:
    """Stored pairs re-checked against a new schema version: those that no longer fit are listed."""
    kept: list[RawPair] = []
    issues: list[PairIssue] = []
    for n, pair in enumerate(stored, 1):
        checked = check_record({"input": pair.input, "output": pair.output}, schema, "stored pairs.jsonl", n)
        if isinstance(checked, list):
            issues.extend(checked)
        else:
            kept.append(checked.model_copy(update={"synthetic": pair.synthetic}))
    return kept, issues


def read_pair_files(paths: Sequence[Path], schema: dict[str, Any]) -> tuple[list[RawPair], list[PairIssue]]:
    """The pairs of every file; refuses files that hold no valid pair at all (an empty set)."""
    raw: list[RawPair] = []
    issues: list[PairIssue] = []
    for path in paths:
        found, bad = read_pairs(path, schema)
        raw += found
        issues += bad
    if paths and not raw:
        listed = issues or [
            PairIssue(file=str(p), line=0, kind="empty", message="the file holds no pairs") for p in paths
        ]
        raise PairsRefused("no valid pair in the given file(s); nothing was written", listed)
    return raw, issues


def drop_too_long(
    raw: list[RawPair],
    name: str,
    schema: dict[str, Any],
    instructions: str | None,
    count: TokenCounter,
    limit: int,
) -> tuple[list[RawPair], list[PairIssue]]:
    """Pairs whose prompt + target exceed `limit` tokens are listed, never stored: the trainer refuses
    them (a cut JSON target would teach broken JSON), so they are caught here, with file and line."""
    kept, issues = [], []
    for pair, tokens in zip(raw, count(name, schema, instructions, raw), strict=True):
        if tokens <= limit:
            kept.append(pair)
            continue
        message = (
            f"prompt + JSON target is {tokens} tokens with the base model's tokenizer, over the "
            f"limit of {limit}; shorten the input, or raise --max-tokens and train with that max_length"
        )
        issues.append(PairIssue(file=pair.file, line=pair.line, kind="too_long", message=message))
    return kept, issues


def _instructions_in_effect(root: Path, name: str, schema: dict[str, Any], given: str | None) -> str | None:
    """What the prompt will hold: the given instructions, else those stored with this version."""
    stored = root / name / "versions" / version_of(schema) / "instructions.md"
    return given if given is not None or not stored.exists() else stored.read_text(encoding="utf-8")


def register(
    root: Path,
    name: str,
    schema: Any,
    *,
    check: GrammarCheck,
    pairs: Sequence[Path] = (),
    new_pairs: Sequence[RawPair] = (),
    instructions: str | None = None,
    templates: Path | None = None,
    strict: bool = False,
    source: str = "",
    count_tokens: TokenCounter | None = None,
    max_tokens: int = 0,
) -> RegisterOutcome:
    """Check, compile and store a schema version with its pairs; see the module docstring.

    With `count_tokens` and `max_tokens` > 0, pairs longer than `max_tokens` (prompt + target, as the
    trainer tokenizes them) are refused line by line.
    """
    check_name(name)
    schema = check_schema(schema)
    raw, issues = read_pair_files(pairs, schema)  # before the compile: a refused file costs no compile
    raw = list(new_pairs) + raw
    if count_tokens is not None and max_tokens > 0 and raw:
        effective = _instructions_in_effect(root, name, schema, instructions)
        raw, too_long = drop_too_long(raw, name, schema, effective, count_tokens, max_tokens)
        issues += too_long
    report = grammar_report(root, name, schema, check)
    with name_lock(root, name):
        index = read_index(root, name)
        stored = read_pairs_file(root, name)
        if index is not None and index.current != report.version and stored:
            kept, stale = _revalidated(stored, schema)
            issues += stale
            still_valid = {k.input for k in kept}
            stored = [p for p in stored if p.input in still_valid]
        merged, dups = merge_pairs(stored, raw, schema)
        failures = [i for i in issues + dups if i.kind != "duplicate"]
        if strict and failures:
            raise StrictFailure(failures)
        changed = store_version(root, name, schema, instructions, report, source)
        if templates is not None:
            replace_templates(root / name / "templates", templates)
        manifest = None
        if merged and (len(merged) != len(stored) or changed or stale_dataset(root, name, report.version)):
            manifest = write_dataset(root, name, report.version, schema, merged)
    return RegisterOutcome(
        name=name,
        version=report.version,
        changed=changed,
        report=report,
        added=len(merged) - len(stored),
        issues=issues + dups,
        manifest=manifest,
    )


def stale_dataset(root: Path, name: str, version: str) -> bool:
    path = root / name / "dataset" / "manifest.json"
    return not path.exists() or json.loads(path.read_text(encoding="utf-8")).get("schema_version") != version


def replace_templates(final: Path, source: Path) -> None:
    """Swap in a new templates folder: build it beside, then rename old away and new into place."""
    templates = sorted(source.glob("*.j2"))
    if not templates:
        raise RegistryError(f"{source} holds no *.j2 templates")
    files = [*templates, *([source / "vocab.json"] if (source / "vocab.json").exists() else [])]
    staging = final.with_name(final.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    with staged_dir(staging) as tmp:
        for file in files:
            shutil.copyfile(file, tmp / file.name)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
