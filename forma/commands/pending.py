"""Verbs whose issues have not landed yet. Each says so and exits 2; none pretends to work.

When an issue lands, its verb moves to its own module in this package and leaves this list.
"""

from __future__ import annotations

from typing import Annotated

import typer

from forma.console import absent

PENDING: dict[str, tuple[int, str]] = {
    "register": (3, "Register a JSON Schema and its example pairs."),
    "generate": (3, "Generate synthetic pairs for a registered schema."),
    "schemas": (3, "List, show and diff registered schema versions."),
    "train": (4, "Train a LoRA adapter on a registered dataset."),
    "eval": (5, "Evaluate a run on held-out pairs with the serving engine."),
    "gate": (5, "Apply the release gate to an evaluated run."),
    "releases": (5, "List, promote and roll back releases."),
    "serve": (6, "Serve live releases over HTTP."),
    "ship": (7, "Train, evaluate, gate and deploy in one command."),
}


def _make(verb: str, issue: int):
    def command(args: Annotated[list[str] | None, typer.Argument(hidden=True)] = None) -> None:
        absent(verb, issue)

    return command


def attach(app: typer.Typer) -> None:
    for verb, (issue, summary) in PENDING.items():
        app.command(
            verb,
            help=f"{summary} [not built yet: issue #{issue}]",
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        )(_make(verb, issue))
