"""The inference interface evals (and serve) generate through: one request type, one result type.

An engine takes a batch of requests and returns one generation per request, in order. A request holds
the prompt builder's chat messages, the JSON Schema to constrain decoding with (None: unconstrained),
the adapter to apply (None: the base model) and an explicit token cap. Decoding is greedy (temperature 0),
so an evaluation is reproducible and matches what the server will answer.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

EngineKind = Literal["vllm", "hf"]
Message = dict[str, str]


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter by the name it is served under (content-addressed) and its PEFT folder."""

    name: str
    path: Path


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[Message]
    schema: dict[str, Any] | None
    adapter: AdapterRef | None
    max_tokens: int


class Generation(BaseModel):
    """What an engine produced for one request. finish_reason "length" means the text was cut off."""

    model_config = ConfigDict(extra="forbid")

    text: str
    finish_reason: str = Field(description='"stop" (the model ended) or "length" (hit max_tokens).')
    tokens: int = Field(description="Generated tokens.")
    latency_s: float = Field(description="Seconds from the request being scheduled to its last token.")


class EngineError(RuntimeError):
    """An engine that cannot start here, with the fix."""


class Engine(Protocol):
    """Anything that generates: the vLLM engine, the transformers engine, or a named test double."""

    name: str

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]: ...

    def close(self) -> None: ...


VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def rank_cap(adapters: list[AdapterRef]) -> int:
    """The smallest max_lora_rank vLLM accepts that fits every adapter (rank_pattern overrides included)."""
    ranks = [1]
    for adapter in adapters:
        config = json.loads((adapter.path / "adapter_config.json").read_text())
        ranks += [int(config.get("r", 8)), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    return next((cap for cap in VLLM_RANKS if cap >= max(ranks)), VLLM_RANKS[-1])


def open_engine(kind: EngineKind, base_path: Path, max_lora_rank: int = 64, progress: bool = False) -> Engine:
    """Start the engine `kind` on the base checkpoint; the caller closes it. `progress` shows a bar."""
    if kind == "vllm":
        if importlib.util.find_spec("vllm") is None:
            # No silent fallback: a release must be judged by the engine that will serve it.
            raise EngineError(
                "vLLM is not installed here: install forma[cpu] or forma[gpu], or pass --engine hf"
            )
        from evals.engines.vllm_engine import VllmEngine

        return VllmEngine(base_path, max_lora_rank=max_lora_rank, progress=progress)
    from evals.engines.hf_engine import HfEngine

    return HfEngine(base_path, progress=progress)
