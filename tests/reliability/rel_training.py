"""Shared by the RELIABILITY G2-G7 tests (no tests here): a registered `person` schema, one uninterrupted
reference run, and the real `forma train` processes the tests kill, cancel and run side by side.

Every run uses one config on the embedded tiny model: 10 steps of 2 examples (16 train pairs, so steps 9
and 10 are in a second epoch and a resume must restore the reshuffle too), a checkpoint every step, one
thread. On CPU that is bit-reproducible, so "resumed like the reference" is checked as equal sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from typer.testing import CliRunner

from finetune.base_model import ModelInfo, prepare_model
from finetune.config import TrainConfig
from finetune.data import TrainingData
from finetune.order import DATA_ORDER, read_data_order
from finetune.run import ADAPTER_DIR, ADAPTER_WEIGHTS, MANIFEST, file_sha256
from finetune.train import RunResult, train_run
from tests.conftest import REPO, SHARED_MODEL_CACHE

SETS: dict[str, Any] = {
    "max_steps": 10,
    "batch_size": 2,
    "save_steps": 1,
    "lora_r": 8,
    "lora_alpha": 16,
    "num_threads": 1,
    "max_length": 256,
    "learning_rate": 1e-3,
}
CONFIG = TrainConfig(**SETS)
SET_ARGS = [arg for key, value in SETS.items() for arg in ("--set", f"{key}={value}")]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
    "required": ["name", "age", "city"],
}
NAMES = ["Ana", "Bo", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]
NAMES += ["Kai", "Lea", "Mo", "Nia", "Oto", "Pia", "Quin", "Rui", "Sol", "Tao"]
CITIES = ["Lisbon", "Oslo", "Lima", "Kyoto", "Cairo", "Quito", "Accra"]


class Watch(TrainerCallback):
    """An observer callback (RELIABILITY G6): hashes of every base weight and copies of every LoRA
    matrix when training begins and ends, and one train example collated by the run's own collator."""

    def __init__(self) -> None:
        self.base: list[dict[str, str]] = []
        self.lora: list[dict[str, Any]] = []
        self.example: dict[str, Any] = {}

    def _snapshot(self, model: Any) -> None:
        import torch

        base, lora = {}, {}
        for name, param in model.named_parameters():
            if ".lora_" in name:
                lora[name] = param.detach().clone()
            else:
                raw = param.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                base[name] = hashlib.sha256(raw).hexdigest()
        self.base.append(base)
        self.lora.append(lora)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._snapshot(kwargs["model"])

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._snapshot(kwargs["model"])
        # The data-order log stops recording at train end (it is an earlier callback), so this
        # collation leaves it alone.
        loader = kwargs["train_dataloader"]
        features = loader.dataset[0]
        self.example = {"features": features, "batch": loader.collate_fn([features])}


class FillDisk(TrainerCallback):
    """Fills the run's filesystem when training ends, leaving `leave` bytes: the final adapter (about
    10 MB) no longer fits, while the eval's metric lines still do (RELIABILITY G4)."""

    def __init__(self, where: Path, leave: int = 2 << 20) -> None:
        self.where, self.leave = where, leave

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        stat = os.statvfs(self.where)
        chunks = (stat.f_bavail * stat.f_frsize - self.leave) >> 20
        with open(self.where / "filler", "wb") as handle:
            for _ in range(chunks):
                handle.write(bytes(1 << 20))


@dataclass
class Lab:
    """A forma home with `person` registered and the reference run trained in-process."""

    home: Path
    data: TrainingData
    base: ModelInfo
    reference: RunResult
    watch: Watch
    env: dict[str, str] = field(default_factory=dict)

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def reference_sha(self) -> str:
        return file_sha256(self.reference.folder / ADAPTER_DIR / ADAPTER_WEIGHTS)

    def reference_order(self) -> dict[int, list[str]]:
        return final_order(self.reference.folder)

    def forma(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        """A real `forma` process (the CLI), its output in `log`."""
        with open(log, "wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "forma.cli", *args], cwd=REPO, env=self.env, stdout=out, stderr=out
            )


def person_pairs() -> list[dict[str, Any]]:
    return [
        {
            "input": f"{name} is {20 + i} years old and lives in {CITIES[i % len(CITIES)]}.",
            "output": {"name": name, "age": 20 + i, "city": CITIES[i % len(CITIES)]},
        }
        for i, name in enumerate(NAMES)
    ]


def register_person(home: Path) -> None:
    from forma.cli import app

    (home / "in").mkdir(parents=True)
    schema, pairs = home / "in" / "schema.json", home / "in" / "pairs.jsonl"
    schema.write_text(json.dumps(SCHEMA))
    pairs.write_text("".join(json.dumps(p) + "\n" for p in person_pairs()))
    env = {"FORMA_HOME": str(home), "FORMA_MODEL_CACHE": str(SHARED_MODEL_CACHE)}
    args = ["register", "person", "--schema", str(schema), "--pairs", str(pairs)]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output


_LAB: dict[str, Lab] = {}


def make_lab(root: Path) -> Lab:
    """Built once per pytest process and shared by every G test module (the reference run is ~15 s)."""
    if "lab" in _LAB:
        return _LAB["lab"]
    from finetune.registered import load_training_data

    home = root / "home"
    register_person(home)
    data = load_training_data(home / "schemas", "person")
    base = prepare_model(SHARED_MODEL_CACHE)
    watch = Watch()
    reference = train_run(data, base, CONFIG, home / "runs", progress=False, callbacks=[watch])
    env = os.environ | {"FORMA_HOME": str(home), "FORMA_MODEL_CACHE": str(SHARED_MODEL_CACHE)}
    env["PYTHONPATH"] = str(REPO)
    _LAB["lab"] = Lab(home=home, data=data, base=base, reference=reference, watch=watch, env=env)
    return _LAB["lab"]


def final_order(folder: Path) -> dict[int, list[str]]:
    """Step -> example ids; asserts that a step logged twice (re-run after a kill) saw the same ones."""
    order = read_data_order(folder / DATA_ORDER)
    for step, records in order.items():
        assert all(r == records[0] for r in records), f"step {step} replayed other examples: {records}"
    return {step: records[0] for step, records in order.items()}


def wait_until(
    check: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, limit: float = 300
) -> None:
    """Poll `check` while `proc` runs; fail if it ends first or `limit` seconds pass."""
    deadline = time.monotonic() + limit
    while not check():
        assert proc.poll() is None, f"the process ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {limit} s"
        time.sleep(0.02)


def new_run(runs: Path, before: set[str], proc: subprocess.Popen[bytes]) -> Path:
    """The run folder a just-started `forma train` creates (its manifest written)."""
    found: list[Path] = []

    def appeared() -> bool:
        found[:] = [p for p in runs.iterdir() if p.name not in before and (p / MANIFEST).is_file()]
        return bool(found)

    wait_until(appeared, proc, "a new run folder")
    return found[0]


def kill_9(proc: subprocess.Popen[bytes]) -> None:
    assert proc.poll() is None, "the process ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def logged_step(folder: Path, step: int) -> bool:
    path = folder / DATA_ORDER
    return path.is_file() and step in read_data_order(path)


def enospc_run(schemas_root: Path, runs: Path, out: Path, fill: bool = True) -> None:
    """Train in `runs` until the disk fills while publishing (`fill`: fill the small real filesystem
    there); copy the run folder and what was raised to `out` (a tmpfs in a private mount namespace is
    gone with its process)."""
    from finetune.registered import load_training_data

    data = load_training_data(schemas_root, "person")
    callbacks = [FillDisk(runs)] if fill else []
    try:
        train_run(data, prepare_model(SHARED_MODEL_CACHE), CONFIG, runs, progress=False, callbacks=callbacks)
        raised: dict[str, Any] = {"type": None}
    except Exception as err:
        raised = {"type": type(err).__name__, "message": str(err), "cause": repr(err.__cause__)}
    (folder,) = [p for p in runs.iterdir() if (p / MANIFEST).is_file()]
    shutil.copytree(folder, out / folder.name)
    (out / "raised.json").write_text(json.dumps(raised))


if __name__ == "__main__":
    enospc_run(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
