"""`forma ship`: one command from registered pairs to a live, smoke-tested release, resumable step by step."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from finetune.config import TrainConfig
from finetune.run import BaseModelRef, DatasetRef, RunManifest, write_manifest
from forma.cli import app
from forma.ship import matching_run
from schemas.prompt import prompt_hash

FORMA = str(Path(sys.executable).parent / "forma")


class _Data:
    name = "demo"
    schema_version = "v1"
    dataset_sha256 = "d" * 64


class _Base:
    content_sha256 = "b" * 64


def _run(runs: Path, run_id: str, status: str, config: TrainConfig, **changes: str) -> None:
    manifest = RunManifest(
        run_id=run_id,
        status=status,  # type: ignore[arg-type]
        schema_name="demo",
        schema_version=changes.get("schema_version", "v1"),
        dataset=DatasetRef(sha256=changes.get("dataset", "d" * 64), counts={"train": 1}),
        base_model=BaseModelRef(id="m", path="/m", content_sha256="b" * 64),
        prompt_hash=changes.get("prompt_hash", prompt_hash()),
        config=config.model_dump(mode="json"),
        created_at="2026-01-01T00:00:00+00:00",
    )
    (runs / run_id).mkdir(parents=True)
    write_manifest(runs / run_id, manifest)


def test_matching_run_prefers_completed_and_ignores_other_inputs(tmp_path: Path) -> None:
    config = TrainConfig()
    _run(tmp_path, "demo-1", "completed", config)
    _run(tmp_path, "demo-2", "failed", config)
    _run(tmp_path, "demo-3", "completed", config, dataset="e" * 64)
    _run(tmp_path, "demo-4", "completed", config, prompt_hash="0" * 16)
    _run(tmp_path, "demo-5", "completed", TrainConfig(max_steps=3))
    found = matching_run(tmp_path, _Data(), config, _Base())
    assert found is not None and found[1].run_id == "demo-1"
    resumable = matching_run(tmp_path, _Data(), TrainConfig(max_steps=3), _Base())
    assert resumable is not None and resumable[1].run_id == "demo-5"


def test_matching_run_resumes_an_unfinished_one(tmp_path: Path) -> None:
    _run(tmp_path, "demo-1", "failed", TrainConfig())
    found = matching_run(tmp_path, _Data(), TrainConfig(), _Base())
    assert found is not None and found[1].status == "failed"
    assert matching_run(tmp_path / "none", _Data(), TrainConfig(), _Base()) is None


def test_ship_refuses_an_unregistered_schema() -> None:
    result = CliRunner().invoke(app, ["ship", "nothing_here"])
    assert result.exit_code == 1
    assert "nothing_here" in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ship(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [FORMA, "ship", "support_ticket", "--set", "max_steps=2", "--eval-limit", "4", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_ship_gates_then_deploys_to_a_running_server(forma_home: Path, base_model: Path) -> None:
    assert (
        subprocess.run([FORMA, "register", "support_ticket", "--example"], capture_output=True).returncode
        == 0
    )
    failed = _ship()
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAIL  test size: 4" in failed.stdout and "nothing live changed" in failed.stdout
    assert not (forma_home / "releases" / "support_ticket.jsonl").exists()

    # A policy that a two-step run can pass, so the deploy half runs on the same (reused) run.
    policy = "min_test_size: 4\nmin_field_f1: 0.0\nmin_unconstrained_valid_rate: 0.0\n"
    (forma_home / "schemas" / "support_ticket" / "gate.yaml").write_text(policy)
    port = _free_port()
    server = subprocess.Popen(
        [FORMA, "serve", "--open", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, server)
        shipped = _ship("--server", url)
        assert shipped.returncode == 0, shipped.stdout + shipped.stderr
        assert "reused finished steps: train, eval" in shipped.stdout
        ledger = (forma_home / "releases" / "support_ticket.jsonl").read_text().splitlines()
        release = json.loads(ledger[-1])["release"]
        assert f"live release: {release['release_id']}" in shipped.stdout
        assert "smoke test:" in shipped.stdout
        again = _ship("--server", url)  # everything finished: nothing is redone or promoted twice
        assert again.returncode == 0 and "reused finished steps: train, eval, promote" in again.stdout
        assert len((forma_home / "releases" / "support_ticket.jsonl").read_text().splitlines()) == 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _wait_ready(url: str, server: subprocess.Popen[bytes], seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, "forma serve exited before it was ready"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} not ready after {seconds} s")
