"""The one layout of forma's home. Every other package receives these paths as arguments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from forma.settings import FormaSettings, get_settings


@dataclass(frozen=True)
class Layout:
    home: Path
    models: Path

    @property
    def schemas(self) -> Path:
        """The schema registry: one folder per schema name."""
        return self.home / "schemas"

    @property
    def runs(self) -> Path:
        """Training runs: one folder per run id."""
        return self.home / "runs"

    @property
    def releases(self) -> Path:
        """The append-only release ledger."""
        return self.home / "releases"


def layout(settings: FormaSettings | None = None) -> Layout:
    settings = settings or get_settings()
    home = settings.home.expanduser().resolve()
    models = (settings.model_cache or home / "models").expanduser().resolve()
    return Layout(home=home, models=models)
