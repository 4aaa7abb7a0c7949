"""`forma serve` as users run it: the gateway starts its own vLLM child, survives the engine's death by
restarting it, and on SIGTERM drains in-flight requests and leaves no process behind. One engine start
plus one restart: about two minutes on 2 cores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from test_serve_support import INVOICE, TEXTS, make_adapters, promote_run, register_schemas, write_run

from serve.engine_process import free_port

pytestmark = pytest.mark.slow
FORMA = str(Path(sys.executable).parent / "forma")


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        assert proc.poll() is None, "forma serve exited"
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready after {timeout} s")


def engine_pid(proc: subprocess.Popen[bytes]) -> int:
    children = psutil.Process(proc.pid).children()
    return next(c.pid for c in children if "vllm.entrypoints" in " ".join(c.cmdline()))


def test_serve_supervises_its_engine_and_drains_on_sigterm(forma_home: Path, base_model: Path) -> None:
    adapter = forma_home / "adapter"
    make_adapters(base_model, [adapter])
    version = register_schemas(forma_home / "schemas", base_model, {"invoice": INVOICE})["invoice"]
    promote_run(
        forma_home / "releases", write_run(forma_home / "runs", base_model, adapter, "invoice", version, "r0")
    )
    port, log = free_port(), forma_home / "serve.log"
    url = f"http://127.0.0.1:{port}"
    command = [FORMA, "serve", "--open", "--port", str(port), "--max-cpu-loras", "4", "--timeout", "90"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT)
    try:
        # Generous bounds: they only catch a hang; a loaded 2-core machine takes minutes to start vLLM.
        wait_ready(url, proc, timeout=300)
        extract = {"text": TEXTS[0]}
        assert httpx.post(url + "/v1/extract/invoice", json=extract, timeout=120).status_code == 200

        # The engine dies: requests get 503 at once (never a hang), readiness fails, the engine comes back.
        os.kill(engine_pid(proc), signal.SIGKILL)
        started = time.monotonic()
        down = httpx.post(url + "/v1/extract/invoice", json=extract, timeout=30)
        assert down.status_code == 503 and time.monotonic() - started < 2
        assert down.headers["retry-after"]
        assert httpx.get(url + "/readyz").status_code == 503
        wait_ready(url, proc, timeout=420)
        assert httpx.post(url + "/v1/extract/invoice", json=extract, timeout=120).status_code == 200

        # SIGTERM: the admitted request finishes, then the gateway stops its engine and exits.
        family = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        results: list[int] = []
        batch = threading.Thread(
            target=lambda: results.append(
                httpx.post(url + "/v1/extract/invoice/batch", json={"texts": TEXTS}, timeout=120).status_code
            )
        )
        batch.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        batch.join(timeout=120)
        assert results == [200]
        proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in family):
            assert time.monotonic() < deadline, "engine processes outlived the gateway"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert '"msg": "engine_restarted"' in text and '"msg": "draining"' in text
    assert TEXTS[0] not in text
