"""`forma ship NAME`: one command from registered pairs to a live, smoke-tested release."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from forma.console import console, fail
from forma.paths import layout


def ship(
    name: Annotated[str, typer.Argument(help="The registered schema to ship.")],
    config: Annotated[Path | None, typer.Option("--config", help="A TrainConfig YAML file.")] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="Override one config key, e.g. --set max_steps=20.")
    ] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Base model: prepared id, folder or hub id.")
    ] = None,
    engine: Annotated[str, typer.Option(help="Eval engine: vllm (the serving engine) or hf.")] = "vllm",
    eval_limit: Annotated[int | None, typer.Option(help="Evaluate only the first N test pairs.")] = None,
    server: Annotated[
        str | None, typer.Option("--server", help="URL of a running forma server to deploy the release to.")
    ] = None,
) -> None:
    """Validate, train, evaluate, gate, promote and deploy NAME; re-running reuses finished steps."""
    from evals.gate import GateError
    from evals.inputs import EvalError
    from evals.ledger import LedgerError
    from finetune.base_model import BaseModelError
    from finetune.config import ConfigError
    from finetune.data import DataError
    from finetune.run import RunError
    from forma.commands.evals import show_verdict
    from forma.ship import ShipError, ShipOptions
    from forma.ship import ship as run_ship
    from schemas.errors import RegistryError

    options = ShipOptions(
        name=name,
        config=config,
        sets=sets or [],
        base=base,
        engine=engine,
        eval_limit=eval_limit,
        server=server.rstrip("/") if server else None,
        # The admin key comes from the environment, never the command line (shell history, ps).
        api_key=os.environ.get("FORMA_ADMIN_KEY"),
    )
    refusals = (ShipError, GateError, EvalError, LedgerError, BaseModelError, ConfigError, DataError)
    try:
        summary = run_ship(options, layout(), show_verdict)
    except (*refusals, RunError, RegistryError) as err:
        fail(str(err))
    console.print(f"\n[bold]ship {name}[/]: run {summary.run_id} ({summary.run_folder})")
    if summary.reused:
        console.print(f"reused finished steps: {', '.join(summary.reused)}")
    console.print("timings (s): " + ", ".join(f"{k} {v}" for k, v in summary.timings.items()))
    if not summary.gate_passed:
        console.print("[bold red]gate failed[/]: not promoted; nothing live changed")
        raise typer.Exit(1)
    console.print(f"live release: {summary.release_id}")
    if summary.smoke is not None:
        console.print(f"smoke test: {summary.smoke['data']}")


def attach(app: typer.Typer) -> None:
    app.command("ship", help="Train, evaluate, gate and deploy in one command.")(ship)
