"""Which train examples each optimizer step saw: `data_order.jsonl` in the run folder.

One line per step, `{"step": N, "examples": [id, ...]}` in batch order, where an id is the registry's pair
id (`schemas.dataset.input_id`, stable across re-registration). A resumed run must replay the exact order
an uninterrupted one would (RELIABILITY G2), and this log is how that is checked: a step re-run after a
kill appears twice, and both lines must agree.

The Trainer hands callbacks no batches, so the collator is wrapped: it notes each micro-batch's ids in a
queue, and the step callbacks take them off in order (the dataloader prefetches, so a queue, not a slot).
Under several processes the log is rank 0's share of each step.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from schemas.dataset import input_id

DATA_ORDER = "data_order.jsonl"


def _key(input_ids: Any) -> int:
    # A hash, not the token tuple: the lookup stays small on a large dataset.
    return hash(tuple(int(i) for i in input_ids))


class DataOrderLog(TrainerCallback):
    """Records the example ids of every optimizer step while training (not during evaluation)."""

    def __init__(self, path: Path, texts: list[str], tokenized: Any, enabled: bool = True) -> None:
        # Tokenized row i is train pair i: TRL maps the rows in order and drops none (no packing).
        rows = (row["input_ids"] for row in tokenized)  # row by row: the column may not fit in memory
        self.ids = {_key(ids): input_id(text) for ids, text in zip(rows, texts, strict=True)}
        self.path, self.enabled = path, enabled
        self.recording = False
        self.pending: deque[list[str]] = deque()
        self.current: list[str] = []

    def wrap(self, collator: Any) -> Any:
        def collate(features: list[dict[str, Any]]) -> Any:
            if self.recording:
                self.pending.append([self.ids.get(_key(f["input_ids"]), "?") for f in features])
            return collator(features)

        return collate

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.recording, self.current = True, []
        self.pending.clear()

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.current += self.pending.popleft()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        examples, self.current = self.current + self.pending.popleft(), []
        if self.enabled and state.is_world_process_zero:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, "examples": examples}) + "\n")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.recording = False
        self.pending.clear()


def read_data_order(path: Path) -> dict[int, list[list[str]]]:
    """Every record per step, in file order (a step re-run after a resume has more than one)."""
    steps: dict[int, list[list[str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the last line of a killed run can be cut off
        steps.setdefault(record["step"], []).append(record["examples"])
    return steps
