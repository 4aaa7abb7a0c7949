"""`forma serve`: the extraction API over HTTP (FastAPI gateway + vLLM engine with multi-LoRA)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forma.console import fail
from forma.paths import layout


def serve(
    host: Annotated[str, typer.Option(help="Gateway bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8080,
    engine_url: Annotated[
        str | None, typer.Option(help="Use this running vLLM OpenAI server instead of starting one.")
    ] = None,
    base: Annotated[
        str | None, typer.Option(help="Base model id or folder. Default: the embedded one.")
    ] = None,
    keys_file: Annotated[Path | None, typer.Option(help="JSON list of {name, key, schemas, admin}.")] = None,
    open_access: Annotated[
        bool, typer.Option("--open", help="Run without API keys (only allowed on a loopback host).")
    ] = False,
    max_loras: Annotated[int, typer.Option(help="Adapters batched together in the engine.")] = 4,
    max_lora_rank: Annotated[int, typer.Option(help="Largest adapter rank (8, 16, 32, 64...).")] = 16,
    max_cpu_loras: Annotated[int, typer.Option(help="Adapters cached in memory; more load on demand.")] = 16,
    max_tokens: Annotated[int, typer.Option(help="Cap on generated tokens per request.")] = 256,
    max_in_flight: Annotated[int, typer.Option(help="Requests sent to the engine at once.")] = 64,
    max_queue: Annotated[
        int, typer.Option(help="Requests waiting for an engine slot; past in-flight + queue, 429.")
    ] = 0,
    timeout: Annotated[float, typer.Option(help="Per-request deadline in seconds; past it, 504.")] = 60.0,
    log_text: Annotated[bool, typer.Option(help="Log request texts (off by default).")] = False,
    log_level: Annotated[
        str, typer.Option(help="info, warning, or debug (debug needs --log-text: it may log documents).")
    ] = "info",
    deterministic: Annotated[
        bool,
        typer.Option(
            help="Same request, same output, whatever it is batched with (temperature 0). GPU: vLLM's "
            "batch-invariant kernels; CPU: one request at a time, much lower throughput."
        ),
    ] = False,
) -> None:
    """Serve every schema's live release over HTTP: /v1/extract, OpenAI-compatible /v1/chat/completions.

    Other limits are FORMA_SERVE_* variables (e.g. FORMA_SERVE_BODY_TIMEOUT_S, FORMA_SERVE_MAX_HEADER_BYTES).
    """
    from pydantic import ValidationError

    from finetune.base_model import BaseModelError, resolve_base
    from serve.gateway import EngineStartError
    from serve.server import run_server
    from serve.settings import ServeSettings, SettingsError

    paths = layout()
    try:
        # The engine's base model: releases record theirs, and one trained on another base is refused.
        # Behind --engine-url the gateway cannot see the engine's base unless --base names it.
        info = resolve_base(base, paths.models) if engine_url is None or base else None
        base_model = Path(info.path) if info and engine_url is None else None
        settings = ServeSettings(
            schemas_root=paths.schemas,
            runs_root=paths.runs,
            releases_root=paths.releases,
            base_model=base_model,
            base_model_sha256=info.content_sha256 if info else None,
            host=host,
            port=port,
            engine_url=engine_url,
            api_keys_file=keys_file,
            open_access=open_access,
            max_loras=max_loras,
            max_lora_rank=max_lora_rank,  # type: ignore[arg-type]
            max_cpu_loras=max_cpu_loras,
            max_tokens=max_tokens,
            max_in_flight=max_in_flight,
            max_queue=max_queue,
            request_timeout_s=timeout,
            log_text=log_text,
            log_level=log_level,  # type: ignore[arg-type]
            deterministic=deterministic,
            engine_log=paths.home / "logs" / "engine.log",
        )
        run_server(settings)
    except (SettingsError, EngineStartError, BaseModelError, ValidationError) as err:
        fail(str(err))
