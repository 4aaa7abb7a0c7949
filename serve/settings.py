"""Gateway settings: one typed record, read once at startup (never at import), every field `FORMA_SERVE_*`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    """Settings that are valid one by one but must not run together; the message says the fix."""


LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]  # the ranks vLLM 0.32 accepts for --max-lora-rank


class ServeSettings(BaseSettings):
    """How `forma serve` runs. The CLI fills the paths from forma's layout; tests pass them directly."""

    model_config = SettingsConfigDict(env_prefix="FORMA_SERVE_", extra="forbid")

    schemas_root: Path = Field(description="The schema registry folder (layout().schemas).")
    runs_root: Path = Field(description="Training runs folder (layout().runs).")
    releases_root: Path = Field(description="The release ledger folder (layout().releases).")
    base_model: Path | None = Field(
        default=None, description="Base model folder the child engine serves; unused with engine_url."
    )
    base_model_sha256: str | None = Field(
        default=None,
        description="Content hash of the engine's base model: releases trained on another are refused.",
    )
    host: str = Field(default="127.0.0.1", description="Gateway bind address.")
    port: int = Field(default=8080, ge=0, le=65535, description="Gateway port.")
    engine_url: str | None = Field(
        default=None, description="An existing vLLM OpenAI server to use instead of starting a child engine."
    )
    engine_port: int = Field(
        default=0, ge=0, le=65535, description="Child engine port on 127.0.0.1; 0 picks one."
    )
    engine_log: Path | None = Field(default=None, description="Where the child engine's output goes.")
    max_loras: int = Field(default=4, ge=1, description="Adapters batched together in the engine at once.")
    max_lora_rank: LoraRank = Field(default=16, description="Largest LoRA rank the engine accepts.")
    max_cpu_loras: int = Field(
        default=16, ge=1, description="Adapters cached in host memory; more load on demand."
    )
    max_model_len: int = Field(default=2048, ge=128, description="Engine context length (prompt + output).")
    max_tokens: int = Field(default=256, ge=1, description="Cap on generated tokens; always sent explicitly.")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Largest request body; more -> 413.")
    max_text_chars: int = Field(default=20_000, ge=1, description="Largest input text; more -> 413.")
    max_batch: int = Field(default=64, ge=1, description="Most texts in one batch request; more -> 413.")
    max_in_flight: int = Field(
        default=64, ge=1, description="Requests sent to the engine at once; more wait in the queue."
    )
    max_queue: int = Field(
        default=0,
        ge=0,
        description="Requests waiting at the gateway for an engine slot; past in-flight + queue -> 429.",
    )
    max_header_bytes: int = Field(
        default=65_536, ge=1024, description="Largest request line + headers; more -> 431, connection closed."
    )
    max_headers: int = Field(default=100, ge=8, description="Most header lines in a request; more -> 431.")
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="A connection must send its request line and headers within this."
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="A request body must arrive within this (slow drip -> 408, closed)."
    )
    request_timeout_s: float = Field(default=60.0, gt=0, description="Per-request deadline; past it -> 504.")
    engine_start_timeout_s: float = Field(default=300.0, gt=0, description="How long startup waits for vLLM.")
    engine_check_s: float = Field(default=1.0, gt=0, description="How often the engine's health is checked.")
    ledger_poll_s: float = Field(default=2.0, gt=0, description="How often the release ledger is checked.")
    drain_timeout_s: int = Field(
        default=30, ge=0, description="How long SIGTERM waits for in-flight requests."
    )
    api_keys_file: Path | None = Field(default=None, description="JSON file of API keys with their scopes.")
    api_keys: str | None = Field(
        default=None,
        validation_alias=AliasChoices("FORMA_API_KEYS", "api_keys"),
        description="Keys as 'KEY=SCOPE,SCOPE;KEY2=*' (scopes: schema names, '*' for all, 'admin').",
    )
    open_access: bool = Field(
        default=False, description="Run without keys; refused unless the gateway binds to loopback."
    )
    log_text: bool = Field(default=False, description="Log request texts (off: logs never carry user text).")
    log_level: Literal["debug", "info", "warning"] = Field(
        default="info",
        description="Gateway log level. debug adds engine and exception messages, which may quote "
        "documents, so it is refused unless log_text is on.",
    )
    deterministic: bool = Field(
        default=False,
        description="Batch-invariant engine (RELIABILITY B4): a request's output does not depend on what "
        "else is batched with it. GPU: vLLM's batch-invariant kernels; CPU, which has none: one request at "
        "a time, at a throughput cost. Only for the engine forma starts (not with engine_url).",
    )
    engine_stall_s: float = Field(
        default=60.0,
        gt=0,
        description="Requests waiting at the engine with none completed this long -> not ready (stalled).",
    )


def log_policy_error(settings: ServeSettings) -> str | None:
    """RELIABILITY D5: at info and above logs never carry document text; debug may, so it is opt-in."""
    if settings.log_level == "debug" and not settings.log_text:
        return (
            "log level debug may write document text to the logs (engine and exception messages): "
            "add --log-text to accept that, or use --log-level info"
        )
    return None


def deterministic_error(settings: ServeSettings) -> str | None:
    """RELIABILITY B4: the mode is a setting of the engine forma starts; an engine behind engine_url was
    started by someone else, and saying "deterministic" over it would promise what nobody configured."""
    if settings.deterministic and settings.engine_url is not None:
        return (
            "--deterministic configures the engine forma starts, not one at --engine-url: start that "
            "engine batch-invariant yourself (GPU: VLLM_BATCH_INVARIANT=1; CPU: --max-num-seqs 1) and "
            "drop --deterministic, or drop --engine-url"
        )
    return None
