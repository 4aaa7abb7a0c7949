"""Pure builders for the child vLLM engine: its command line and environment. Unit-tested, no I/O."""

from __future__ import annotations

import sys
from pathlib import Path

from serve.settings import ServeSettings

BASE_MODEL_NAME = "forma-base"  # the engine's name for the bare base model; clients never reach it


def engine_command(settings: ServeSettings, model: Path, port: int) -> list[str]:
    """`python -m vllm.entrypoints.openai.api_server ...`, bound to loopback with LoRA on."""
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
    ]


def engine_env(base: dict[str, str]) -> dict[str, str]:
    """The child's environment: runtime LoRA loading is on, which is safe only because the engine
    listens on 127.0.0.1 and the gateway is the one caller that can reach it."""
    env = dict(base)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env
