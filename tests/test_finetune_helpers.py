"""Shared data for the finetune tests (no tests here): a small schema and pairs the tiny model learns fast."""

from __future__ import annotations

from typing import Any

from finetune.data import TrainingData, from_pairs

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "age", "city"],
}
NAMES = ["Ana", "Bo", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Mo", "Nia"]
CITIES = ["Lisbon", "Oslo", "Lima", "Kyoto", "Cairo", "Quito"]


def person_pairs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            f"{name} is {20 + i} years old and lives in {CITIES[i % 6]}.",
            {"name": name, "age": 20 + i, "city": CITIES[i % 6]},
        )
        for i, name in enumerate(NAMES)
    ]


def person_data() -> TrainingData:
    pairs = person_pairs()
    return from_pairs("person", SCHEMA, pairs[:12], pairs[12:])
