"""Token log-probabilities through the LM head on CPU: one bf16 matmul per token chunk, fused reductions.

TRL 1.16 scores tokens with `ChunkedLogProbFunction`, built for GPUs: off CUDA it folds 32768-wide
vocabulary tiles with about a dozen fp32 elementwise passes each, and accumulates the input gradient with
fp32 matmuls (`_addmm_fp32` casts both sides to fp32 there), ~7x slower than bf16 AMX matmuls on these
CPUs. Profiled on the 135M model it took ~20% of a training step. `cpu_log_probs` computes the same
outputs with one matmul over the whole vocabulary per token chunk (no partial products are rounded, the
bias TRL's fp32 accumulation guards against), ATen's fused fp32 reductions, and a bf16 matmul for the input
gradient, as autocast gives every linear layer. The frozen head gets no weight gradient. Token chunks
bound the fp32 logits held at once.
"""

from __future__ import annotations

import functools
from typing import Any

# 128 x 49152 fp32 logits = 24 MiB: under glibc's largest mmap threshold (32 MiB, see `finetune.model`), so
# each chunk reuses heap memory instead of faulting in fresh pages (which cost ~10% of a step at 512).
TOKEN_CHUNK = 128
SUPPORTED_OUTPUTS = {"log_probs", "entropy", "is_top1"}


def cpu_log_probs(
    hidden: Any,
    weight: Any,
    bias: Any,
    targets: Any,
    temperature: float,
    chunk_size: int,
    final_logit_softcapping: float | None = None,
    logit_scale: float = 1.0,
    outputs: tuple[str, ...] = ("log_probs",),
) -> tuple[Any, ...]:
    """Drop-in for TRL's `ChunkedLogProbFunction.apply`: same arguments, the same five outputs.

    Cases it does not cover (a softcapped or biased head, a trainable head, other outputs) go to TRL's.
    """
    from trl.kernels import ChunkedLogProbFunction

    args = (
        hidden,
        weight,
        bias,
        targets,
        temperature,
        chunk_size,
        final_logit_softcapping,
        logit_scale,
        outputs,
    )
    if (
        hidden.device.type != "cpu"
        or set(outputs) - SUPPORTED_OUTPUTS
        or final_logit_softcapping is not None
        or bias is not None
        or weight.requires_grad
    ):
        return ChunkedLogProbFunction.apply(*args)
    log_probs, entropy, is_top1 = _function().apply(hidden, weight, targets, logit_scale / temperature)
    return (
        log_probs,
        entropy if "entropy" in outputs else None,
        None,
        None,
        is_top1 if "is_top1" in outputs else None,
    )


def _compute_dtype(hidden: Any) -> Any:
    import torch

    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else hidden.dtype


def _logits(hidden: Any, weight: Any, scale: float) -> Any:
    """Logits of one token chunk, vocabulary-major (vocab x tokens), times TRL's scale (logit scale /
    temperature). Vocabulary-major because oneDNN multiplies (vocab x hidden) @ (hidden x tokens) ~2.5x
    faster than (tokens x hidden) @ (hidden x vocab) here (6 vs 16 ms for 128 tokens): the long side of
    the product is the contiguous weight's rows, not a transposed view."""
    import torch

    z = torch.mm(weight, hidden.t()).float()
    return z.mul_(scale) if scale != 1.0 else z


def _forward_chunk(z: Any, targets: Any) -> tuple[Any, ...]:
    """log p(target), log Z, entropy and is-top-1 (the target is the first argmax) of a chunk's
    vocabulary-major logits (vocab x tokens)."""
    import torch

    top = z.amax(0)  # amax is vectorized; logsumexp and argmax each cost ~8x more here
    e = (z - top).exp_()
    total = e.sum(0)
    log_z = top + total.log()
    target_z = z.gather(0, targets.unsqueeze(0)).squeeze(0)
    entropy = log_z - (e * z).sum(0) / total
    # "Top-1" is the first argmax, as TRL's kernel defines it (bf16 logits can tie). A target that reaches
    # the maximum alone is it; only tokens whose maximum is tied pay for an argmax, which runs ~10x slower
    # than this count over the vocabulary-major logits (a strided reduction plus a column gather).
    is_top1 = target_z >= top
    if is_top1.any():
        unsure = is_top1 & ((z == top).sum(0, dtype=torch.int32) > 1)
        if unsure.any():
            is_top1[unsure] = z[:, unsure].argmax(0) == targets[unsure]
    return target_z - log_z, log_z, entropy, is_top1


def _grad_chunk(hidden: Any, weight: Any, targets: Any, log_z: Any, grad: Any, scale: float) -> Any:
    """d(sum grad * log p(target)) / d hidden for one chunk: (onehot - p) * grad * scale, then @ weight."""
    import torch

    p = _logits(hidden, weight, scale).sub_(log_z).exp_()
    dz = p.mul_(grad.neg())
    dz.scatter_add_(0, targets.unsqueeze(0), grad.unsqueeze(0))
    if scale != 1.0:
        dz.mul_(scale)
    return torch.mm(dz.to(hidden.dtype).t(), weight)


@functools.cache
def _function() -> Any:
    """The autograd Function, built on first use so importing this module does not import torch."""
    import torch

    class LossPositionLogProbs(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any, scale: float) -> tuple[Any, ...]:
            dtype = _compute_dtype(hidden)
            h, w = hidden.to(dtype), weight.to(dtype)
            chunks = [
                _forward_chunk(_logits(h[i : i + TOKEN_CHUNK], w, scale), targets[i : i + TOKEN_CHUNK])
                for i in range(0, h.shape[0], TOKEN_CHUNK)
            ]
            log_probs, log_z, entropy, is_top1 = (torch.cat(parts) for parts in zip(*chunks, strict=True))
            ctx.save_for_backward(hidden, weight, targets, log_z)
            ctx.scale, ctx.dtype = scale, dtype
            ctx.mark_non_differentiable(entropy, is_top1)
            return log_probs, entropy, is_top1

        @staticmethod
        def backward(ctx: Any, grad_log_probs: Any, *_: Any) -> tuple[Any, ...]:
            hidden, weight, targets, log_z = ctx.saved_tensors
            if grad_log_probs is None or not ctx.needs_input_grad[0]:
                return None, None, None, None
            h, w, grad = hidden.to(ctx.dtype), weight.to(ctx.dtype), grad_log_probs.float()
            pieces = [
                _grad_chunk(h[r], w, targets[r], log_z[r], grad[r], ctx.scale)
                for r in (slice(i, i + TOKEN_CHUNK) for i in range(0, h.shape[0], TOKEN_CHUNK))
            ]
            return torch.cat(pieces).to(hidden.dtype), None, None, None

    return LossPositionLogProbs
