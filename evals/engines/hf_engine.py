"""The second engine: plain transformers + PEFT, constrained by xgrammar's logits processor.

Used where vLLM is not installed and as the baseline in benchmarks. It generates one request at a time
(exact per-request latency, no padding effects), greedy, with the tokenizer's own chat template: the
same prompt text vLLM's `llm.chat` renders.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from evals.engines import AdapterRef, Generation, GenerationRequest


class HfEngine:
    name = "hf"

    def __init__(self, base_path: Path, threads: int | None = 1, progress: bool = False) -> None:
        import torch
        import xgrammar as xgr
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            # Batch-1 decoding of a small model is latency-bound: on shared cores, OpenMP threads spinning
            # against each other made it ~10x slower than one thread (measured on the 2-core dev machine).
            torch.set_num_threads(threads)

        self.tokenizer = AutoTokenizer.from_pretrained(base_path)
        self.model: Any = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16)
        self.model.eval()
        # The model's vocab can be larger than the tokenizer's (padding rows): the bitmask must cover it.
        info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
        self.compiler = xgr.GrammarCompiler(info)
        self._grammars: dict[str, Any] = {}
        self._adapters: set[str] = set()
        self.progress = progress

    def _grammar(self, schema: dict[str, Any]) -> Any:
        # Not key-sorted: the grammar emits properties in the order the schema declares them.
        key = json.dumps(schema)
        if key not in self._grammars:
            self._grammars[key] = self.compiler.compile_json_schema(key)
        return self._grammars[key]

    def _use_adapter(self, adapter: AdapterRef) -> None:
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            self.model = PeftModel.from_pretrained(self.model, str(adapter.path), adapter_name=adapter.name)
        elif adapter.name not in self._adapters:
            self.model.load_adapter(str(adapter.path), adapter_name=adapter.name)
        self._adapters.add(adapter.name)
        self.model.set_adapter(adapter.name)

    def _generate_one(self, request: GenerationRequest) -> Generation:
        import contextlib

        import torch
        from xgrammar.contrib.hf import LogitsProcessor

        inputs: Any = self.tokenizer.apply_chat_template(
            request.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        # A processor holds matcher state: a fresh one per generate() call, as xgrammar requires.
        processors = [LogitsProcessor(self._grammar(request.schema))] if request.schema is not None else []
        if request.adapter is not None:
            self._use_adapter(request.adapter)
            scope: Any = contextlib.nullcontext()
        else:
            scope = (
                self.model.disable_adapter()
                if hasattr(self.model, "disable_adapter")
                else contextlib.nullcontext()
            )
        started = time.perf_counter()
        with torch.inference_mode(), scope:
            out = self.model.generate(
                **inputs,
                max_new_tokens=request.max_tokens,
                do_sample=False,
                logits_processor=processors,
                pad_token_id=self.tokenizer.eos_token_id,
            )
        latency = time.perf_counter() - started
        new = out[0, inputs["input_ids"].shape[1] :].tolist()
        return _generation(self.tokenizer, new, request.max_tokens, latency)

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        from tqdm import tqdm

        return [self._generate_one(r) for r in tqdm(requests, desc="generate", disable=not self.progress)]

    def close(self) -> None:
        self.model = None


def _generation(tokenizer: Any, token_ids: list[int], max_tokens: int, latency: float) -> Generation:
    """finish_reason as vLLM reports it: "stop" when the model emitted EOS, "length" when it was cut off."""
    stops = {tokenizer.eos_token_id, *getattr(tokenizer, "all_special_ids", [])}
    ended = bool(token_ids) and token_ids[-1] in stops
    if ended:
        token_ids = token_ids[:-1]
    reason = "stop" if ended or len(token_ids) < max_tokens else "length"
    return Generation(
        text=tokenizer.decode(token_ids, skip_special_tokens=True),
        finish_reason=reason,
        tokens=len(token_ids) + int(ended),
        latency_s=latency,
    )
