"""`forma train NAME`: fine-tune a LoRA adapter on a registered dataset and publish a run folder.

Each `forma train` is a new run with its own folder, even for inputs trained before (it says so); two at
once never share a folder. `forma ship` is the idempotent door: it reuses a finished run with the same
inputs. SIGINT/SIGTERM cancel a run (status `cancelled`, checkpoints kept, nothing published);
`--resume` continues a cancelled, failed or interrupted one. `forma runs` lists runs as they stand now.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from forma.console import console, errors, fail
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
    from finetune.lifecycle import RunCancelled
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
        if not resume:
            _note_an_identical_run(paths.runs, data, train_config, model)
        result = train_run(data, model, train_config, paths.runs, resume=resume)
    except (ConfigError, DataError, RunError, BaseModelError, RegistryError) as err:
        fail(str(err))
    except RunCancelled as stop:
        # soft_wrap: the run id and the resume command stay whole, for people and scripts alike.
        errors.print(
            f"[bold red]cancelled[/] run {stop.run_id} ({stop.signal_name}); checkpoints kept, nothing "
            f"published; continue with: forma train {name} --resume {stop.run_id}",
            soft_wrap=True,
        )
        # 128 + the signal number, as a shell reports a process that a signal ended.
        raise typer.Exit(128 + int(getattr(signal, stop.signal_name, signal.SIGINT))) from None
    metrics = result.manifest.metrics
    val = f", val loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else ""
    console.print(f"trained {name}: train loss {metrics.get('train_loss', float('nan')):.4f}{val}")
    # soft_wrap: a long path must stay on one line, for people copying it and for scripts reading it.
    console.print(f"run id: {result.run_id}", soft_wrap=True)
    console.print(f"run folder: {result.folder}", soft_wrap=True)


def _note_an_identical_run(runs: Path, data: Any, config: Any, model: Any) -> None:
    from forma.ship import matching_run

    match = matching_run(runs, data, config, model)
    if match and match[1].status == "completed":
        console.print(
            f"note: run {match[1].run_id} already trained these exact inputs; this starts a new run "
            f"(`forma ship {data.name}` reuses finished runs)",
            soft_wrap=True,
        )


def _newest_checkpoint(folder: Path) -> int | None:
    steps = [p.name.removeprefix("checkpoint-") for p in (folder / "checkpoints").glob("checkpoint-*")]
    return max((int(s) for s in steps if s.isdigit()), default=None)


def runs(
    name: Annotated[str | None, typer.Argument(help="Only the runs of this schema.")] = None,
) -> None:
    """List training runs, oldest first, with their status now (a vanished trainer shows `interrupted`)."""
    from rich.table import Table

    from finetune.run import list_runs

    table = Table("run id", "status", "step", "adapter", "note")
    for folder, manifest in list_runs(layout().runs, name):
        steps = manifest.metrics.get("global_step") or _newest_checkpoint(folder) or ""
        note = manifest.error or ""
        if manifest.failure:
            note = f"{manifest.failure}: {note}"
        adapter = (manifest.adapter_sha256 or "")[:12]
        table.add_row(manifest.run_id, manifest.status, str(steps), adapter, note[:80])
    console.print(table)


def attach(app: typer.Typer) -> None:
    app.command("train", help="Train a LoRA adapter on a registered dataset.")(train)
    app.command("runs", help="List training runs and their status.")(runs)
