"""What an evaluation reads, checked before any model starts: the run, its schema, the pairs.

Refusals name the reason and the fix: a schema version gone from the registry, a prompt builder that
changed since training (train/serve skew), a corrupted adapter, a golden file that breaks the schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.validation import output_errors
from finetune.run import RunManifest, verified_adapter
from schemas.prompt import prompt_hash

Pair = tuple[str, Any]


class EvalError(RuntimeError):
    """An evaluation refused before it started, with the reason and the fix."""


@dataclass(frozen=True)
class SchemaRef:
    """A registered schema version, as the prompt builder and the constrained decoder need it."""

    name: str
    version: str
    schema: dict[str, Any]
    instructions: str | None = None
    # The registry's decoder-only copy (keywords no grammar backend implements relaxed); the full
    # `schema` still judges validity, exactly as the server does.
    decoder_schema: dict[str, Any] | None = None


def check_prompt_hash(manifest: RunManifest) -> None:
    current = prompt_hash()
    if manifest.prompt_hash != current:
        raise EvalError(
            f"run {manifest.run_id} was trained with prompt format {manifest.prompt_hash}, but this forma "
            f"builds prompts as {current}: its scores would not reflect what serving sends. Retrain the run "
            "with this version (forma train)"
        )


def checked_adapter(folder: Path, manifest: RunManifest) -> Path:
    """The run's adapter, refused on a prompt-hash mismatch or a weights file that fails its hash."""
    check_prompt_hash(manifest)
    return verified_adapter(folder, manifest)


def registered_schema(registry: Path, name: str, version: str) -> SchemaRef:
    """The exact schema version a run trained on, from the registry; refused when it is missing."""
    from schemas.errors import RegistryError
    from schemas.registry import load_schema

    try:
        found = load_schema(registry, name, version)
    except (RegistryError, OSError, ValueError) as err:
        raise EvalError(
            f"schema {name!r} version {version} is not in the registry at {registry} ({err}); the run "
            "cannot be judged against a schema forma no longer has. Register that version again or retrain"
        ) from err
    return SchemaRef(
        name=name,
        version=version,
        schema=found.json_schema,
        instructions=found.instructions,
        decoder_schema=found.decoder_schema,
    )


def split_pairs(registry: Path, name: str, split: str) -> list[Pair]:
    """The registered dataset's pairs of one split (train, val or test)."""
    from schemas.dataset import load_dataset
    from schemas.errors import RegistryError

    try:
        dataset = load_dataset(registry, name)
    except RegistryError as err:
        raise EvalError(str(err)) from err
    pairs = [(p.input, p.output) for p in dataset.pairs if p.split == split]
    if not pairs:
        raise EvalError(
            f"schema {name!r}: its dataset has no {split!r} pairs; register more pairs or pass --pairs"
        )
    return pairs


def golden_pairs(path: Path, schema: dict[str, Any]) -> list[Pair]:
    """An external golden file (JSONL of {"input", "output"}), every output checked against the schema."""
    if not path.is_file():
        raise EvalError(f"{path}: no such golden file")
    pairs: list[Pair] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            pairs.append(_golden_line(path, number, line, schema))
    if not pairs:
        raise EvalError(f'{path}: no pairs; write one JSON object per line: {{"input": ..., "output": ...}}')
    return pairs


def _golden_line(path: Path, number: int, line: str, schema: dict[str, Any]) -> Pair:
    where = f"{path}:{number}"
    try:
        row = json.loads(line)
    except ValueError as err:
        raise EvalError(f"{where}: not valid JSON ({err}); write one JSON object per line") from err
    if not isinstance(row, dict) or set(row) != {"input", "output"}:
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise EvalError(f"{where}: expected exactly the keys input and output, found {keys}")
    if not isinstance(row["input"], str) or not row["input"].strip():
        raise EvalError(f"{where}: /input must be a non-empty string")
    errors = output_errors(schema, row["output"])
    if errors:
        pointer, message = errors[0]
        raise EvalError(
            f"{where}: /output{pointer} breaks the schema: {message}; fix the pair "
            f"or the schema ({len(errors)} error(s) on this line)"
        )
    return row["input"], row["output"]
