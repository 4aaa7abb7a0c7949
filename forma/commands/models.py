"""`forma models prepare|list`: the base models forma trains and serves."""

from __future__ import annotations

from typing import Annotated

import typer

from forma.console import console, fail
from forma.paths import layout

app = typer.Typer(help="Prepare and list base models in forma's model cache.", no_args_is_help=True)


@app.command("prepare")
def prepare(
    source: Annotated[
        str | None,
        typer.Argument(
            help="A local checkpoint folder, a .gguf file or a hub id. Default: the embedded SmolLM2-135M-Instruct."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Id to store it under in the cache.")] = None,
) -> None:
    """Convert a base model into a plain safetensors checkpoint in the cache (idempotent)."""
    from finetune.base_model import BaseModelError, prepare_model

    cache = layout().models
    try:
        info = prepare_model(cache, source=source, name=name)
    except BaseModelError as err:
        fail(str(err))
    console.print(f"prepared {info.id} at {info.path} (sha256 {info.content_sha256[:12]})")


@app.command("list")
def list_() -> None:
    """Show the prepared base models."""
    from finetune.base_model import list_models

    cache = layout().models
    infos = list_models(cache)
    if not infos:
        console.print(f"no model prepared in {cache}: run `forma models prepare`")
        return
    for info in infos:
        console.print(f"{info.id}\t{info.dtype}\t{info.content_sha256[:12]}\t{info.source}\t{info.path}")
