"""`register`: a schema (+ pairs, instructions, templates) in, a stored version and dataset out.

Everything is checked and computed in memory first; only then, under the name's lock, is anything
written. So `strict=True` with any bad pair writes nothing, and a crash never leaves half a version.
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
from schemas.errors import PairIssue, RegistryError, SchemaError
from schemas.fileio import staged_dir
from schemas.pairs import RawPair, check_record, read_pairs
from schemas.registry import check_name, name_lock, read_index, store_version, version_of
from schemas.report import GrammarReport, RegistrationReport

GrammarCheck = Callable[[dict[str, Any]], GrammarReport]


class StrictFailure(RegistryError):
    """`--strict` and at least one bad pair: nothing was written."""

    def __init__(self, issues: list[PairIssue]) -> None:
        self.issues = issues
        super().__init__(
            f"{len(issues)} bad pair(s); --strict: nothing was written\n"
            + "\n".join(i.render() for i in issues)
        )


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


def grammar_report(root: Path, name: str, schema: dict[str, Any], check: GrammarCheck) -> RegistrationReport:
    """Reuse the stored report of an already-registered version; compile and probe otherwise."""
    version = version_of(schema)
    stored = root / name / "versions" / version / "report.json"
    if stored.exists():
        return RegistrationReport.model_validate_json(stored.read_text(encoding="utf-8"))
    return RegistrationReport(
        name=name, version=version, schema_sha256=schema_hash(schema), grammar=check(schema)
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
) -> RegisterOutcome:
    check_name(name)
    schema = check_schema(schema)
    report = grammar_report(root, name, schema, check)
    raw, issues = list(new_pairs), []
    for path in pairs:
        found, bad = read_pairs(path, schema)
        raw += found
        issues += bad
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
