"""The `forma` command: one sub-app or verb per step of the pipeline.

Heavy libraries (torch, trl, vllm) are imported inside the verbs, so `forma --help` stays instant.
"""

from __future__ import annotations

import typer

from forma.commands import evals, models, schemas, ship, train
from forma.commands.serve import serve

app = typer.Typer(
    name="forma",
    help="Turn a JSON Schema and example pairs into a fine-tuned extraction model, and serve it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(models.app, name="models")
app.add_typer(schemas.app, name="schemas")
app.command("register")(schemas.register)
app.command("generate")(schemas.generate)
train.attach(app)
evals.attach(app)
ship.attach(app)
app.command("serve")(serve)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
