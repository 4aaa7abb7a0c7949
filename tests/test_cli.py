"""The CLI surface: every verb is listed, and verbs not built yet say so instead of faking success."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from forma.cli import app
from forma.commands.pending import PENDING

VERBS = ["register", "generate", "train", "eval", "gate", "ship", "serve", "releases"]
runner = CliRunner()


def test_help_lists_every_verb() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in [*VERBS, "models", "schemas"]:
        assert verb in result.output


@pytest.mark.parametrize("verb", sorted(PENDING))
def test_pending_verbs_exit_2_and_do_nothing(verb: str, forma_home) -> None:
    result = runner.invoke(app, [verb, "anything", "--flag"])
    assert result.exit_code == 2
    assert "not built yet" in result.output
    assert not forma_home.exists()


def test_help_does_not_import_heavy_libraries() -> None:
    code = "import sys; from forma.cli import app; print(sorted({'torch','vllm','trl','transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
