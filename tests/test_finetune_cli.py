"""`forma train`: bad input ends in a readable error before training; a registered dataset trains end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forma.cli import app
from tests.conftest import REPO

runner = CliRunner()
EXAMPLE = REPO / "schemas" / "examples" / "contact"


def test_unknown_set_key_fails_before_anything(forma_home: Path) -> None:
    result = runner.invoke(app, ["train", "contact", "--set", "epoch=2"])
    assert result.exit_code == 1
    assert "unknown config key at /epoch" in result.output
    assert not (forma_home / "runs").exists()


def test_resume_refuses_new_config(forma_home: Path) -> None:
    result = runner.invoke(app, ["train", "contact", "--resume", "x", "--set", "max_steps=2"])
    assert result.exit_code == 1
    assert "drop --config/--set" in result.output


def test_unregistered_schema_is_a_clear_error(forma_home: Path) -> None:
    result = runner.invoke(app, ["train", "nosuch", "--set", "max_steps=1"])
    assert result.exit_code == 1
    assert "nosuch" in result.output and "forma register" in result.output


@pytest.mark.slow
def test_train_a_registered_dataset_end_to_end(forma_home: Path) -> None:
    from schemas.dataset import load_dataset
    from schemas.registry import load_schema

    registered = runner.invoke(
        app,
        [
            "register",
            "contact",
            "--schema",
            str(EXAMPLE / "schema.json"),
            "--pairs",
            str(EXAMPLE / "pairs.jsonl"),
        ],
    )
    assert registered.exit_code == 0, registered.output
    sets = ["max_steps=2", "batch_size=2", "num_threads=1", "save_steps=1"]
    result = runner.invoke(app, ["train", "contact", *[arg for s in sets for arg in ("--set", s)]])
    assert result.exit_code == 0, result.output
    run_id = re.search(r"run id: (\S+)", result.output).group(1)  # type: ignore[union-attr]
    folder = Path(re.search(r"run folder: (\S+)", result.output).group(1))  # type: ignore[union-attr]
    assert folder == forma_home.resolve() / "runs" / run_id and "val loss" in result.output
    manifest = json.loads((folder / "manifest.json").read_text())
    dataset = load_dataset(forma_home / "schemas", "contact").manifest
    assert manifest["dataset"] == {"sha256": dataset.sha256, "counts": dataset.counts}
    assert manifest["schema_version"] == load_schema(forma_home / "schemas", "contact").version
    assert manifest["status"] == "completed" and manifest["metrics"]["global_step"] == 2

    again = runner.invoke(app, ["train", "contact", "--resume", run_id])
    assert again.exit_code == 1 and "already completed" in again.output
