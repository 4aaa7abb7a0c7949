"""Where forma keeps its files, read from the environment when asked (never at import time)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FormaSettings(BaseSettings):
    """Settings shared by every verb. Each field can be set with `FORMA_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="FORMA_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.cwd() / ".forma",
        description="forma's home: registry, model cache, runs and release ledger live below it.",
    )
    model_cache: Path | None = Field(
        default=None,
        description="Where prepared base models live; defaults to <home>/models. Tests share one cache.",
    )


def get_settings() -> FormaSettings:
    return FormaSettings()
