"""The CLI surface: every verb is listed, and verbs not built yet say so instead of faking success."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from forma.cli import app

VERBS = ["register", "generate", "train", "eval", "gate", "ship", "serve", "releases"]
runner = CliRunner()


def test_help_lists_every_verb() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in [*VERBS, "models", "schemas"]:
        assert verb in result.output


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_its_own_help(verb: str) -> None:
    result = runner.invoke(app, [verb, "--help"])
    assert result.exit_code == 0
    assert "not built yet" not in result.output


def test_help_does_not_import_heavy_libraries() -> None:
    code = "import sys; from forma.cli import app; print(sorted({'torch','vllm','trl','transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
