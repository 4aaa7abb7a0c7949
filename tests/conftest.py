"""Shared fixtures: every test gets its own forma home; all share one prepared base-model cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
# The cache `make setup` fills; converting the GGUF again per test would cost ~15 s each.
SHARED_MODEL_CACHE = Path(os.environ.get("FORMA_TEST_MODEL_CACHE", REPO / ".forma" / "models")).resolve()


@pytest.fixture(autouse=True)
def forma_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("FORMA_HOME", str(home))
    monkeypatch.setenv("FORMA_MODEL_CACHE", str(SHARED_MODEL_CACHE))
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    return home


@pytest.fixture(scope="session")
def base_model() -> Path:
    """The embedded base model, prepared once (a no-op after `make setup`)."""
    from finetune.base_model import prepare_model

    return Path(prepare_model(SHARED_MODEL_CACHE).path)


# The serve fixtures (one vLLM engine per session, shared by the serve tests and the reliability battery).
pytest_plugins = ["serve_fixtures"]
