"""What a run shows and leaves while it trains: a progress bar with tokens/s and loss, metrics.jsonl
and TensorBoard event files in the run folder.

Only the main process writes, so a multi-process run leaves one copy of each. The TensorBoard writer is
ours rather than transformers' callback, which closes its writer at train end, before the final eval.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class TokenRate:
    """Trained tokens per second between two log events, from TRL's running `num_tokens` count."""

    def __init__(self) -> None:
        # TRL counts tokens from 0 in each process, so a fresh (or resumed) run starts from 0 here too.
        self.last_tokens: float | None = 0.0
        self.last_time = time.perf_counter()
        self.rate = 0.0

    def update(self, num_tokens: float | None) -> float:
        now = time.perf_counter()
        if num_tokens is not None and self.last_tokens is not None and now > self.last_time:
            self.rate = (num_tokens - self.last_tokens) / (now - self.last_time)
        if num_tokens is not None:
            self.last_tokens, self.last_time = num_tokens, now
        return self.rate


class ProgressAndMetrics(TrainerCallback):
    """A tqdm bar (steps, loss, tokens/s) and one JSON line per logged step in `metrics.jsonl`."""

    def __init__(self, metrics_path: Path, tb_dir: Path, enabled: bool = True) -> None:
        self.metrics_path = metrics_path
        self.tb_dir = tb_dir
        self.enabled = enabled
        self.rate = TokenRate()
        self.bar: Any = None
        self.tb: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step")
        # On resume the first delta would span the restart; start measuring from here.
        self.rate = TokenRate()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        if "loss" in logs:
            record["tokens_per_s"] = round(self.rate.update(logs.get("num_tokens")), 1)
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{logs['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self._to_tensorboard(record, state.global_step)

    def _to_tensorboard(self, record: dict[str, Any], step: int) -> None:
        if self.tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.tb_dir))
        for key, value in record.items():
            if isinstance(value, int | float) and key not in ("step", "epoch"):
                group = "eval" if key.startswith("eval_") else "train"
                self.tb.add_scalar(f"{group}/{key.removeprefix('eval_')}", value, step)
        self.tb.flush()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
