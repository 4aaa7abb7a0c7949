"""`forma train NAME`: fine-tune a LoRA adapter on a registered dataset and publish a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forma.console import console, fail
from forma.paths import layout


def train(
    name: Annotated[str, typer.Argument(help="The registered schema whose train split to learn.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="A TrainConfig YAML file (see finetune/configs/).")
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override one config key, e.g. --set max_steps=20 (repeatable)."),
    ] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Base model: a prepared id, a local folder or a hub id.")
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="Continue this run (id or folder) from its last complete checkpoint."),
    ] = None,
) -> None:
    """Train a LoRA adapter with TRL's SFTTrainer; prints the run id and its folder."""
    from finetune.base_model import BaseModelError, resolve_base
    from finetune.config import ConfigError, load_config
    from finetune.data import DataError
    from finetune.registered import load_training_data
    from finetune.run import RunError
    from finetune.train import train_run
    from schemas.errors import RegistryError

    if resume and (config or sets):
        fail("--resume continues a run with the config it recorded; drop --config/--set")
    paths = layout()
    try:
        train_config = load_config(config, sets or [])
        data = load_training_data(paths.schemas, name)
        model = resolve_base(base, paths.models)
        result = train_run(data, model, train_config, paths.runs, resume=resume)
    except (ConfigError, DataError, RunError, BaseModelError, RegistryError) as err:
        fail(str(err))
    metrics = result.manifest.metrics
    val = f", val loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else ""
    console.print(f"trained {name}: train loss {metrics.get('train_loss', float('nan')):.4f}{val}")
    # soft_wrap: a long path must stay on one line, for people copying it and for scripts reading it.
    console.print(f"run id: {result.run_id}", soft_wrap=True)
    console.print(f"run folder: {result.folder}", soft_wrap=True)


def attach(app: typer.Typer) -> None:
    app.command("train", help="Train a LoRA adapter on a registered dataset.")(train)
