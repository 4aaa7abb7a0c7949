"""Training rows come from the one prompt builder, and bad data is refused before any model loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from finetune.data import (
    DataError,
    build_rows,
    check_chat_template,
    check_data,
    check_lengths,
    from_pairs,
    row_lengths,
)
from schemas.prompt import build_example

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
PAIRS = [
    ("Ana is 31.", {"age": 31, "name": "Ana"}),
    ("Bo, 40 years old, lives by the old harbour.", {"name": "Bo", "age": 40}),
]


@pytest.fixture(scope="module")
def tokenizer(base_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


def test_rows_are_exactly_the_prompt_builders_examples() -> None:
    data = from_pairs("person", SCHEMA, PAIRS, instructions="Find the person.")
    rows = build_rows(data, data.train)
    assert rows == [build_example("person", SCHEMA, t, o, "Find the person.") for t, o in PAIRS]
    assert rows[0]["completion"][0]["content"] == '{"name":"Ana","age":31}'  # schema order, compact


def test_dataset_hash_follows_content_and_split() -> None:
    a = from_pairs("person", SCHEMA, PAIRS)
    assert a.dataset_sha256 == from_pairs("person", SCHEMA, list(PAIRS)).dataset_sha256
    assert a.dataset_sha256 != from_pairs("person", SCHEMA, PAIRS[:1], PAIRS[1:]).dataset_sha256
    assert a.counts == {"train": 2, "val": 0}


def test_no_train_pairs_is_an_error() -> None:
    with pytest.raises(DataError, match="no train pairs"):
        check_data(from_pairs("person", SCHEMA, [], PAIRS))


def test_lengths_count_prompt_and_completion(tokenizer) -> None:
    row = build_rows(from_pairs("person", SCHEMA, PAIRS), PAIRS)[0]
    prompt, full = row_lengths(tokenizer, row)
    assert 10 < prompt < full
    assert check_lengths(tokenizer, [row], max_length=full, split="train") == full


def test_max_length_shorter_than_the_prompt_names_the_pair(tokenizer) -> None:
    rows = build_rows(from_pairs("person", SCHEMA, PAIRS), PAIRS)
    with pytest.raises(DataError, match=r"val pair 0: the prompt alone is \d+ tokens.*--set max_length="):
        check_lengths(tokenizer, rows, max_length=12, split="val")


def test_a_target_over_max_length_is_refused_not_truncated(tokenizer) -> None:
    rows = build_rows(from_pairs("person", SCHEMA, PAIRS), PAIRS)
    _, full = row_lengths(tokenizer, rows[1])
    with pytest.raises(DataError, match=rf"train pair 1: prompt \+ JSON target is {full} tokens"):
        check_lengths(tokenizer, rows, max_length=full - 1, split="train")


def test_a_tokenizer_without_chat_template_is_refused(base_model: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base_model / name, tmp_path / name)
    plain = AutoTokenizer.from_pretrained(tmp_path)  # the same tokenizer, minus chat_template.jinja
    with pytest.raises(DataError, match="has no chat template"):
        check_chat_template(plain, "plain-base")
