"""Terminal output shared by the CLI verbs: one console, one way to fail."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    """End a verb with a readable message on stderr and a non-zero exit status."""
    errors.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)
