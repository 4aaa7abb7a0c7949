"""`forma eval RUN`, `forma gate RUN` and `forma releases NAME|promote|rollback` (issue #5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from forma.console import console, fail
from forma.paths import layout

RUN_HELP = "A run id (under <home>/runs) or a run folder path."


def _paths() -> Any:
    from evals.pipeline import EvalPaths

    found = layout()
    return EvalPaths(registry=found.schemas, runs=found.runs, releases=found.releases)


def _refusals() -> tuple[type[Exception], ...]:
    from evals.engines import EngineError
    from evals.gate import GateError
    from evals.inputs import EvalError
    from evals.ledger import LedgerError
    from finetune.run import RunError
    from schemas.errors import RegistryError

    return (EngineError, EvalError, GateError, LedgerError, RunError, RegistryError)


def eval_(
    run: Annotated[str, typer.Argument(help=RUN_HELP)],
    split: Annotated[str, typer.Option(help="Registered split to evaluate on: train, val or test.")] = "test",
    pairs: Annotated[
        Path | None, typer.Option(help="A golden JSONL file of {input, output} pairs instead of a split.")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="vllm (the serving engine) or hf (transformers + PEFT).")
    ] = "vllm",
    max_tokens: Annotated[
        int, typer.Option(help="Token cap per generation; a cut-off output is invalid.")
    ] = 256,
    limit: Annotated[
        int | None, typer.Option(help="Evaluate only the first N pairs (for a quick look).")
    ] = None,
) -> None:
    """Score a run, the base model and the live release on held-out pairs, in both decoding modes."""
    from evals.pipeline import evaluate_run
    from evals.report_md import summary_rows

    if engine not in ("vllm", "hf"):
        fail(f"--engine {engine!r}: choose vllm or hf")
    if split not in ("train", "val", "test"):
        fail(f"--split {split!r}: choose train, val or test")
    try:
        folder, report = evaluate_run(_paths(), run, split, pairs, engine, max_tokens, limit, progress=True)  # type: ignore[arg-type]
    except _refusals() as err:
        fail(str(err))
    console.print("\n".join(summary_rows(report)), soft_wrap=True)
    console.print(f"reports: {folder / 'eval.md'}  {folder / 'eval.html'}  {folder / 'eval.json'}")


def gate(run: Annotated[str, typer.Argument(help=RUN_HELP)]) -> None:
    """Apply the schema's release gate (<registry>/<name>/gate.yaml, defaults otherwise); exit 1 on failure."""
    from evals.releasing import gate_run

    try:
        folder, verdict = gate_run(_paths(), run)
    except _refusals() as err:
        fail(str(err))
    show_verdict(verdict)
    console.print(f"gate verdict written to {folder / 'gate.json'}")
    if not verdict.passed:
        raise typer.Exit(1)


def show_verdict(verdict: Any) -> None:
    """Each gate rule with its value and verdict; `forma gate` and `forma ship` print the same table."""
    console.print(f"gate policy: {verdict.policy_source}")
    for rule in verdict.rules:
        value = "-" if rule.value is None else f"{rule.value:.4g}"
        mark = "[green]PASS[/]" if rule.passed else "[bold red]FAIL[/]"
        console.print(f"{mark}  {escape(rule.rule)}: {value} ({escape(rule.detail)})")
    console.print(f"verdict: {'passed' if verdict.passed else 'FAILED'}")


class ReleasesGroup(TyperGroup):
    """`forma releases NAME` lists; `forma releases promote|rollback ...` act. A bare NAME means list."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


releases = typer.Typer(
    cls=ReleasesGroup,
    help="List, promote and roll back releases (forma releases NAME).",
    no_args_is_help=True,
)


@releases.command("list")
def list_releases(name: Annotated[str, typer.Argument(help="The schema name.")]) -> None:
    """Every ledger event of a schema, oldest first; the live release is marked."""
    from evals import ledger

    root = layout().releases
    events = ledger.read_events(root, name)
    if not events:
        console.print(f"{name}: no releases yet (promote a gated run with `forma releases promote RUN`)")
        return
    live = ledger.live_release(root, name)
    for event in events:
        r = event.release
        gate_text = "passed" if r.gate_passed else f"FAILED, forced: {r.reason}"
        metrics = " ".join(f"{k}={v:.3g}" for k, v in r.metrics.items())
        console.print(
            f"{event.at}  {event.event:<8} {r.release_id}  run {r.run_id}  adapter {r.adapter_sha256[:12]}  "
            f"gate {gate_text}  {metrics}",
            markup=False,  # a recorded --reason is user text, not rich markup
        )
    if live:
        console.print(f"live: {live.release_id} (run {live.run_id})")


@releases.command("promote")
def promote(
    run: Annotated[str, typer.Argument(help=RUN_HELP)],
    force: Annotated[bool, typer.Option("--force", help="Promote even though the gate failed.")] = False,
    reason: Annotated[
        str | None, typer.Option(help="Why the gate is overridden (recorded; needed with --force).")
    ] = None,
) -> None:
    """Make a gated run the live release of its schema."""
    from evals.releasing import promote_run

    try:
        release = promote_run(_paths(), run, force, reason)
    except _refusals() as err:
        fail(str(err))
    console.print(f"live: {release.release_id} for {release.schema_name} (run {release.run_id})")


@releases.command("rollback")
def rollback(name: Annotated[str, typer.Argument(help="The schema name.")]) -> None:
    """Make the release before the live one live again."""
    from evals import ledger

    try:
        release = ledger.rollback(layout().releases, name)
    except ledger.LedgerError as err:
        fail(str(err))
    console.print(f"live again: {release.release_id} (run {release.run_id})")


def attach(app: typer.Typer) -> None:
    app.command("eval", help="Evaluate a run on held-out pairs with the serving engine.")(eval_)
    app.command("gate", help="Apply the release gate to an evaluated run.")(gate)
    app.add_typer(releases, name="releases")
