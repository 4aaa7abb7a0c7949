"""`generate_pairs`: synthetic pairs for a registered schema, stored through the same path as user pairs."""

from __future__ import annotations

from pathlib import Path

from schemas.errors import RegistryError
from schemas.generate import load_templates, load_vocab, sample_outputs, synthesize
from schemas.register import RegisterOutcome, register
from schemas.registry import load_schema
from schemas.report import GrammarReport


def generate_pairs(
    root: Path,
    name: str,
    *,
    n: int,
    seed: int = 0,
    teacher_url: str | None = None,
    teacher_model: str = "teacher",
    label_file: Path | None = None,
    strict: bool = False,
    client: object | None = None,
) -> RegisterOutcome:
    """Generate `n` pairs (templates, or the teacher at `teacher_url`) and add them to NAME's dataset."""
    registered = load_schema(root, name)
    schema = registered.json_schema
    if teacher_url is None and client is None:
        if label_file is not None:
            raise RegistryError(
                "--label needs --teacher-url: raw texts can only be labelled by a teacher model"
            )
        folder = root / name / "templates"
        pairs, issues = synthesize(schema, load_templates(folder), n, seed, vocab=load_vocab(folder))
    else:
        import random

        from schemas import teacher

        if client is None:
            from openai import OpenAI

            client = OpenAI(base_url=teacher_url, api_key="unused", timeout=120, max_retries=1)
        if label_file is not None:
            texts = [t for t in label_file.read_text(encoding="utf-8").splitlines() if t.strip()][:n]
            pairs, issues = teacher.teacher_labels(client, teacher_model, schema, texts, str(label_file))
        else:
            outputs = sample_outputs(schema, n, random.Random(seed), seed)
            pairs, issues = teacher.teacher_inputs(client, teacher_model, schema, outputs)
    if strict and issues:
        from schemas.register import StrictFailure

        raise StrictFailure(issues)

    def reuse(_: dict) -> GrammarReport:  # the version is registered: its stored report is reused, no compile
        raise RegistryError(f"schema {name!r} changed under generate; register it again")

    outcome = register(
        root,
        name,
        schema,
        check=reuse,
        new_pairs=pairs,
        strict=strict,
        instructions=registered.instructions,
        source="generate",
    )
    return outcome.model_copy(update={"issues": issues + outcome.issues})
