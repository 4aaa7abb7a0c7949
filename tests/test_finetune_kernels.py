"""The training fast paths compute what the libraries they replace compute, values and gradients.

`finetune.lm_head.cpu_log_probs` against TRL's `ChunkedLogProbFunction`, `finetune.lora_linear` against
PEFT's `lora.Linear.forward`, and `finetune.attention.causal_attention` against torch's SDPA, each in fp32
(tight tolerances) and, where training runs that way, under bf16 autocast (bf16 tolerances).
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from finetune.attention import LENGTH_BUCKET, causal_attention, causal_bias, varlen_sdpa_forward  # noqa: E402
from finetune.lm_head import TOKEN_CHUNK, cpu_log_probs  # noqa: E402
from finetune.lora_linear import use_fused_lora  # noqa: E402

OUTPUTS = ("log_probs", "entropy", "is_top1")


def head_case(tokens: int = 2 * TOKEN_CHUNK + 37, vocab: int = 1000, hidden: int = 48):
    """Hidden states, a frozen head and targets; a third of the targets are the argmax (top-1 hits)."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=gen)
    weight = torch.randn(vocab, hidden, generator=gen) * 0.3
    targets = torch.randint(0, vocab, (tokens,), generator=gen)
    hits = torch.arange(tokens) % 3 == 0
    targets[hits] = (h[hits] @ weight.t()).argmax(-1)
    return h, weight, targets


def score(fn, h, weight, targets, dtype, **kwargs):
    hidden = h.clone().to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = fn(hidden, weight.to(dtype), None, targets, 0.7, 256, None, 1.3, OUTPUTS, **kwargs)
    (-(out[0] * torch.linspace(0.5, 1.5, len(targets))).sum()).backward()
    return out, hidden.grad


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_cpu_log_probs_match_trl(dtype, tol) -> None:
    from trl.kernels import ChunkedLogProbFunction

    case = head_case()
    ours, our_grad = score(cpu_log_probs, *case, dtype)
    theirs, their_grad = score(ChunkedLogProbFunction.apply, *case, dtype)
    torch.testing.assert_close(ours[0], theirs[0], atol=tol, rtol=tol)  # log-probs
    torch.testing.assert_close(ours[1], theirs[1], atol=tol, rtol=tol)  # entropy
    assert ours[2] is None and ours[3] is None
    assert torch.equal(ours[4], theirs[4]) and ours[4].sum() >= len(case[2]) // 3  # top-1 hits found
    torch.testing.assert_close(our_grad.float(), their_grad.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_log_probs_top1_is_the_first_argmax_when_the_maximum_is_tied(dtype) -> None:
    """Two vocabulary rows with identical weights tie at every token's maximum: a target on the first is
    top-1, on the second is not, exactly as TRL's kernel says (the tie path of `cpu_log_probs`)."""
    from trl.kernels import ChunkedLogProbFunction

    h, weight, targets = head_case()
    h[:, 0] = 10.0
    weight[9] = weight[5] = torch.cat([torch.tensor([5.0]), weight[5, 1:]])
    assert torch.equal((h @ weight.t()).argmax(-1), torch.full_like(targets, 5))
    targets[::2], targets[1::2] = 5, 9
    ours, _ = score(cpu_log_probs, h, weight, targets, dtype)
    theirs, _ = score(ChunkedLogProbFunction.apply, h, weight, targets, dtype)
    assert torch.equal(ours[4], targets == 5) and torch.equal(ours[4], theirs[4])


def test_cpu_log_probs_buffers_carry_nothing_between_calls_and_are_released() -> None:
    """The chunk buffers outlive a call (`finetune.lm_head.scratch`): a call after others of other sizes,
    vocabularies and dtypes gives exactly what it gave first, and leaving `compact_lm_head` frees them."""
    from finetune.lm_head import scratch
    from finetune.model import compact_lm_head

    case = head_case()
    first, first_grad = score(cpu_log_probs, *case, torch.bfloat16)
    score(cpu_log_probs, *head_case(tokens=TOKEN_CHUNK + 5), torch.bfloat16)
    score(cpu_log_probs, *head_case(tokens=9, vocab=700), torch.float32)
    again, again_grad = score(cpu_log_probs, *case, torch.bfloat16)
    for mine, before in zip((*again, again_grad), (*first, first_grad), strict=True):
        assert (mine is None and before is None) or torch.equal(mine, before)
    assert scratch.cache_info().currsize == 1
    with compact_lm_head(True):
        pass
    assert scratch.cache_info().currsize == 0


def test_cpu_log_probs_leave_other_heads_to_trl() -> None:
    """A softcapped head is outside what `cpu_log_probs` computes: TRL's function answers instead."""
    from trl.kernels import ChunkedLogProbFunction

    h, weight, targets = head_case(tokens=40)
    ours = cpu_log_probs(h, weight, None, targets, 1.0, 256, 30.0, 1.0, OUTPUTS)
    theirs = ChunkedLogProbFunction.apply(h, weight, None, targets, 1.0, 256, 30.0, 1.0, OUTPUTS)
    torch.testing.assert_close(ours[0], theirs[0])


def plain_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64, bias=False), torch.nn.SiLU(), torch.nn.Linear(64, 32))


def lora_model(dropout: float = 0.0, use_dora: bool = False):
    from peft import LoraConfig, get_peft_model

    base = plain_model()
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=dropout,
        target_modules=["0", "2"],
        use_dora=use_dora,
        init_lora_weights=False,
    )
    return get_peft_model(base, config)


def forward_backward(model, x, autocast: bool):
    model.zero_grad()
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = model(x)
    (y.float() ** 2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return y.detach().float(), x.grad.float(), grads


@pytest.mark.parametrize(("autocast", "tol"), [(False, 1e-5), (True, 3e-2)])
def test_fused_lora_matches_peft(autocast, tol) -> None:
    peft_model = lora_model()
    fused = copy.deepcopy(peft_model)
    assert use_fused_lora(fused) == 2
    x = torch.randn(3, 17, 32)
    y, x_grad, grads = forward_backward(peft_model, x, autocast)
    y2, x_grad2, grads2 = forward_backward(fused, x, autocast)
    torch.testing.assert_close(y2, y, atol=tol, rtol=tol)
    torch.testing.assert_close(x_grad2, x_grad, atol=tol, rtol=tol)
    assert grads2.keys() == grads.keys() and all(g.dtype == torch.float32 for g in grads2.values())
    for name in grads:
        torch.testing.assert_close(grads2[name], grads[name], atol=tol, rtol=tol, msg=name)


def test_fused_lora_keeps_peft_for_what_it_does_not_compute() -> None:
    assert use_fused_lora(lora_model(dropout=0.1)) == 0
    assert use_fused_lora(lora_model(use_dora=True)) == 0
    model = lora_model()
    use_fused_lora(model)
    x = torch.randn(2, 5, 32)
    with model.disable_adapter():  # switched after the swap: PEFT's path gives the base model
        off = model(x)
    torch.testing.assert_close(off, plain_model()(x))
    assert not torch.allclose(model(x), off)


@pytest.mark.parametrize("kv_heads", [3, 9])
def test_causal_attention_matches_sdpa(kv_heads: int) -> None:
    from torch.nn.functional import scaled_dot_product_attention

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 9, 23, 16, generator=gen, requires_grad=True)
    k = torch.randn(1, kv_heads, 23, 16, generator=gen, requires_grad=True)
    v = torch.randn(1, kv_heads, 23, 16, generator=gen, requires_grad=True)
    ours = causal_attention(q, k, v, 0.25, causal_bias(40, torch.float32))
    grads = torch.autograd.grad(ours.sum(), (q, k, v))
    theirs = scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.25, enable_gqa=kv_heads != 9)
    expected = torch.autograd.grad(theirs.sum(), (q, k, v))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_causal_attention_in_bf16_is_as_close_to_fp32_as_sdpa_in_bf16() -> None:
    """The bf16 path (mask in the score product, softmax in bf16 with fp32 accumulation) loses no more
    than torch's own SDPA in bf16 does, against fp32 SDPA, forward and backward."""
    from torch.nn.functional import scaled_dot_product_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 96, 64, generator=gen) for h in (9, 3, 3))
    grad_out = torch.randn(2, 9, 96, 64, generator=gen)

    def run(attend, dtype: torch.dtype) -> list[torch.Tensor]:
        inputs = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        out = attend(*inputs)
        out.backward(grad_out.to(dtype))
        return [out.detach().float()] + [t.grad.float() for t in inputs]

    def sdpa(*qkv):
        return scaled_dot_product_attention(*qkv, is_causal=True, scale=0.125, enable_gqa=True)

    exact = run(sdpa, torch.float32)
    ours = run(lambda *qkv: causal_attention(*qkv, 0.125, causal_bias(96, torch.bfloat16)), torch.bfloat16)
    torch_bf16 = run(sdpa, torch.bfloat16)
    for mine, theirs, want in zip(ours, torch_bf16, exact, strict=True):
        error, reference_error = (float((t - want).norm() / want.norm()) for t in (mine, theirs))
        assert error < 1.5 * reference_error, (error, reference_error)


def test_packed_attention_matches_sdpa_per_example() -> None:
    """Packed examples of lengths sharing a bucket, alone in one, exactly a bucket long, and empty: each
    the same (values and gradients) as SDPA on that example alone."""
    from torch.nn.functional import scaled_dot_product_attention

    lengths = [5, 17, LENGTH_BUCKET, 0, LENGTH_BUCKET + 3, 9]
    total = sum(lengths)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, total, 16, generator=gen, requires_grad=True)
    k = torch.randn(1, 2, total, 16, generator=gen, requires_grad=True)
    v = torch.randn(1, 2, total, 16, generator=gen, requires_grad=True)
    cu = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0)
    ours, _ = varlen_sdpa_forward(None, q, k, v, None, scaling=0.25, cu_seq_lens_q=cu)
    grads = torch.autograd.grad((ours * torch.linspace(0, 1, total).view(1, -1, 1, 1)).sum(), (q, k, v))
    theirs = torch.cat(
        [
            scaled_dot_product_attention(*parts, is_causal=True, scale=0.25, enable_gqa=True)
            for parts in zip(*(t.split(lengths, 2) for t in (q, k, v)), strict=True)
        ],
        dim=2,
    ).transpose(1, 2)
    expected = torch.autograd.grad((theirs * torch.linspace(0, 1, total).view(1, -1, 1, 1)).sum(), (q, k, v))
    assert ours.shape == (1, total, 6, 16)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
