"""Pure builders for the child vLLM engine: its command line and environment. Unit-tested, no I/O."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

from serve.settings import ServeSettings

BASE_MODEL_NAME = "forma-base"  # the engine's name for the bare base model; clients never reach it


def engine_command(settings: ServeSettings, model: Path, port: int, gpu: bool = False) -> list[str]:
    """`python -m vllm.entrypoints.openai.api_server ...`, bound to loopback with LoRA on. `gpu`: the
    engine runs on an accelerator (it only matters in deterministic mode, see `batch_invariance`)."""
    # Structured outputs stay on vLLM's `auto` backend: the registry checks each schema against the
    # backend auto picks for it. (disable_any_whitespace would need one fixed backend for all schemas;
    # adapters trained on compact JSON emit compact JSON anyway, and max_tokens bounds the rest.)
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        BASE_MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-lora",
        "--max-loras",
        str(settings.max_loras),
        "--max-lora-rank",
        str(settings.max_lora_rank),
        "--max-cpu-loras",
        str(settings.max_cpu_loras),
        "--max-model-len",
        str(settings.max_model_len),
        "--generation-config",
        "vllm",
        "--disable-uvicorn-access-log",
        *batch_invariance(settings, gpu).args,
    ]


def engine_env(
    base: dict[str, str], settings: ServeSettings | None = None, gpu: bool = False
) -> dict[str, str]:
    """The child's environment: runtime LoRA loading is on, which is safe only because the engine
    listens on 127.0.0.1 and the gateway is the one caller that can reach it."""
    env = dict(base)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if settings is not None:
        env.update(batch_invariance(settings, gpu).env)
    return env


class BatchMode(NamedTuple):
    args: list[str]  # added to the engine's command line
    env: dict[str, str]  # added to its environment
    note: str  # for the startup log


def batch_invariance(settings: ServeSettings, gpu: bool) -> BatchMode:
    """How deterministic mode (RELIABILITY B4) sets up the engine; nothing when it is off.

    Greedy decoding alone does not make an output repeatable: batched kernels choose their tiling and
    reduction order by the batch's shape, so the same request can decode differently beside others.
    On GPU, VLLM_BATCH_INVARIANT=1 swaps in vLLM's batch-invariant kernels (CUDA/XPU), batching kept.
    vLLM-CPU 0.32 has none: its attention backend's supports_batch_invariance() is False, and with the
    variable set the engine dies on its first request (the invariant bmm is a Triton kernel). Measured
    there (10 trials each, 1 solo vs 4 identical and 6 mixed-adapter concurrent requests): the oneDNN
    GEMMs' rows change with the batch's row count on AMX CPUs, and no setting fixed it while batching
    (no split KV, no prefix caching, no chunked prefill: 5/10 and 9/10 trials still differ; capping
    ONEDNN_MAX_CPU_ISA below AMX, which makes the GEMMs row-invariant, kills the worker with SIGILL:
    probably from the AMX attention kernel). So on CPU each request runs
    alone (--max-num-seqs 1: 0/10 differ): a batch of one is the same computation whatever is queued,
    at the cost of batching (about 4x lower throughput at 8 concurrent requests)."""
    if not settings.deterministic:
        return BatchMode(
            [], {}, "off: requests are batched; outputs at temperature 0 may vary with the batch"
        )
    if gpu:
        return BatchMode(
            [], {"VLLM_BATCH_INVARIANT": "1"}, "on: VLLM_BATCH_INVARIANT=1 (batch-invariant kernels)"
        )
    return BatchMode(
        ["--max-num-seqs", "1"], {}, "on: --max-num-seqs 1 (vLLM-CPU has no batch-invariant kernels)"
    )
