"""`kill -9` mid-training, then resume: the run ends with the same adapter as an uninterrupted one.

The training process is real (a subprocess running the recipe) and is killed with SIGKILL once it has
written a complete checkpoint; resuming continues from the newest complete checkpoint.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune.base_model import prepare_model
from finetune.config import TrainConfig
from finetune.run import ADAPTER_WEIGHTS, file_sha256
from finetune.train import train_run
from tests.conftest import REPO, SHARED_MODEL_CACHE
from tests.test_finetune_helpers import person_data

pytestmark = pytest.mark.slow
CONFIG = TrainConfig(max_steps=4, batch_size=2, save_steps=2, lora_r=8, lora_alpha=16, num_threads=1)
TRAIN_SCRIPT = f"""
import sys
from pathlib import Path
from finetune.base_model import prepare_model
from finetune.config import TrainConfig
from finetune.train import train_run
from tests.test_finetune_helpers import person_data
config = TrainConfig.model_validate_json({CONFIG.model_dump_json()!r})
train_run(person_data(), prepare_model(Path({str(SHARED_MODEL_CACHE)!r})), config, Path(sys.argv[1]), progress=False)
"""


def start_and_kill_after_first_checkpoint(runs: Path) -> Path:
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(runs)], cwd=REPO, env=os.environ.copy())
    deadline = time.monotonic() + 400
    try:
        while not list(runs.glob("*/checkpoints/checkpoint-2/forma-complete.json")):
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no complete checkpoint appeared"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (folder,) = runs.iterdir()
    return folder


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    base = prepare_model(SHARED_MODEL_CACHE)
    killed = start_and_kill_after_first_checkpoint(tmp_path / "killed")
    assert not (killed / "adapter").exists()  # nothing was published by the killed process
    # Test double for a fault a timed kill cannot cause reliably: a newer checkpoint cut off mid-save.
    half = killed / "checkpoints" / "checkpoint-3"
    if not half.exists():
        shutil.copytree(killed / "checkpoints" / "checkpoint-2", half)
        (half / "forma-complete.json").unlink()
    resumed = train_run(
        person_data(), base, TrainConfig(), tmp_path / "killed", resume=killed.name, progress=False
    )
    straight = train_run(person_data(), base, CONFIG, tmp_path / "straight", progress=False)

    assert resumed.run_id == killed.name and resumed.manifest.status == "completed"
    assert resumed.manifest.config == CONFIG.model_dump(
        mode="json"
    )  # the recorded config, not the one passed
    assert resumed.manifest.metrics["global_step"] == straight.manifest.metrics["global_step"] == 4
    eval_resumed, eval_straight = (
        resumed.manifest.metrics["eval_loss"],
        straight.manifest.metrics["eval_loss"],
    )
    assert math.isclose(eval_resumed, eval_straight, rel_tol=1e-3)
    # Deterministic CPU mode: the same bytes, not just a close loss.
    assert file_sha256(resumed.folder / "adapter" / ADAPTER_WEIGHTS) == file_sha256(
        straight.folder / "adapter" / ADAPTER_WEIGHTS
    )
