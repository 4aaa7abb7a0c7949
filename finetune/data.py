"""What the trainer learns from: plain (input, output) pairs turned into prompt-completion rows.

The rows come only from `schemas.prompt.build_example` (the one prompt builder), and every pair is
checked against the tokenizer before any model is loaded: a missing chat template, an empty train
split or a pair longer than `max_length` each stop the run with the pair and the fix named.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from schemas.canonical import schema_hash
from schemas.prompt import build_example

Pair = tuple[str, Any]
Row = dict[str, list[dict[str, str]]]


class DataError(ValueError):
    """Training data that cannot be used, with the pair, the reason and the fix."""


@dataclass(frozen=True)
class TrainingData:
    """One schema's train and val pairs, and the identity the run manifest records for them."""

    name: str
    schema: dict[str, Any]
    train: list[Pair]
    val: list[Pair] = field(default_factory=list)
    instructions: str | None = None
    schema_version: str = ""
    dataset_sha256: str = ""
    counts: dict[str, int] = field(default_factory=dict)


def pairs_sha256(splits: dict[str, list[Pair]]) -> str:
    """Content hash of in-memory pairs (a registered dataset brings its own manifest hash instead)."""
    canonical = {split: [[text, output] for text, output in pairs] for split, pairs in splits.items()}
    blob = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def from_pairs(
    name: str,
    schema: dict[str, Any],
    train: list[Pair],
    val: list[Pair] | None = None,
    instructions: str | None = None,
) -> TrainingData:
    """Training data from plain pairs, with the schema version and dataset hash computed here."""
    val = val or []
    return TrainingData(
        name=name,
        schema=schema,
        train=list(train),
        val=list(val),
        instructions=instructions,
        schema_version=schema_hash(schema)[:12],
        dataset_sha256=pairs_sha256({"train": train, "val": val}),
        counts={"train": len(train), "val": len(val)},
    )


def build_rows(data: TrainingData, pairs: list[Pair]) -> list[Row]:
    return [build_example(data.name, data.schema, text, output, data.instructions) for text, output in pairs]


def check_chat_template(tokenizer: Any, source: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"base model {source}: its tokenizer has no chat template; forma trains chat prompts, so use an "
            "instruct/chat model or add a chat_template to its tokenizer_config.json"
        )


def _token_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(out["input_ids"])


def row_lengths(tokenizer: Any, row: Row) -> tuple[int, int]:
    """(prompt tokens, prompt + completion tokens) as TRL tokenizes a conversational prompt-completion row."""
    prompt = _token_ids(tokenizer, row["prompt"], add_generation_prompt=True)
    full = _token_ids(tokenizer, row["prompt"] + row["completion"], add_generation_prompt=False)
    return len(prompt), len(full)


def check_lengths(tokenizer: Any, rows: list[Row], max_length: int, split: str) -> int:
    """Refuse any pair that does not fit `max_length`; return the split's total token count.

    A too-long pair is an error, never truncated: a cut JSON target would teach the model broken JSON.
    """
    total = 0
    for index, row in enumerate(rows):
        prompt_len, full_len = row_lengths(tokenizer, row)
        if prompt_len >= max_length:
            raise DataError(
                f"{split} pair {index}: the prompt alone is {prompt_len} tokens, longer than max_length="
                f"{max_length}; raise it (--set max_length={2 * full_len}) or shorten the input text"
            )
        if full_len > max_length:
            raise DataError(
                f"{split} pair {index}: prompt + JSON target is {full_len} tokens, over max_length={max_length}; "
                f"raise it (--set max_length={full_len}) or shorten the pair"
            )
        total += full_len
    return total


def check_data(data: TrainingData) -> None:
    if not data.train:
        raise DataError(
            f"schema {data.name!r}: the dataset has no train pairs; register more pairs "
            "(forma register / forma generate) so the train split is not empty"
        )
