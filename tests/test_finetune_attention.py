"""Padding-free batches are exact: a packed row gives each example the logits it gets alone.

Checks both speed paths of the recipe on the real model: per-example SDPA over a packed row, and TRL's
fused LM head compacted to the loss positions (forma enables compaction on CPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
LENGTHS = [17, 40, 5, 30]


@pytest.fixture(scope="module")
def packed(base_model: Path):
    import torch

    torch.manual_seed(0)
    seqs = [torch.randint(100, 40000, (n,)) for n in LENGTHS]
    bounds = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    batch = {
        "input_ids": torch.cat(seqs)[None],
        "position_ids": torch.cat([torch.arange(n) for n in LENGTHS])[None],
        "cu_seq_lens_q": bounds,
        "cu_seq_lens_k": bounds,
        "max_length_q": max(LENGTHS),
        "max_length_k": max(LENGTHS),
        "use_cache": False,
    }
    return seqs, batch


def load(base_model: Path, attention: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        base_model, dtype=torch.float32, attn_implementation=attention
    )


def test_varlen_sdpa_matches_each_example_alone(base_model: Path, packed) -> None:
    import torch

    from finetune.attention import register_varlen_sdpa

    seqs, batch = packed
    model = load(base_model, register_varlen_sdpa())
    with torch.no_grad():
        alone = torch.cat([model(input_ids=s[None]).logits[0] for s in seqs])
        together = model(**batch).logits[0]
        cache_on = model(**{**batch, "use_cache": True}).logits[0]
    torch.testing.assert_close(together, alone, atol=1e-3, rtol=1e-3)
    # Boundaries come from cu_seq_lens, so even a cache-enabled call (where transformers' SDPA mask
    # ignores packed position_ids) keeps examples apart.
    torch.testing.assert_close(cache_on, alone, atol=1e-3, rtol=1e-3)


def test_compact_lm_head_gives_the_same_loss_and_gradients(base_model: Path, packed) -> None:
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from finetune.model import compact_lm_head

    _, batch = packed
    model = load(base_model, "sdpa")
    add_fused_lm_head(model)
    labels = batch["input_ids"].clone()
    labels[:, : LENGTHS[0] + LENGTHS[1] // 2] = -100  # a prompt: positions without loss

    def loss_and_grad(compact: bool):
        model.zero_grad()
        with compact_lm_head(compact):
            out = model(**batch, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return out.loss.detach(), model.model.norm.weight.grad.clone()

    full_loss, full_grad = loss_and_grad(False)
    compact_loss, compact_grad = loss_and_grad(True)
    torch.testing.assert_close(compact_loss, full_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compact_grad, full_grad, atol=1e-4, rtol=1e-3)
