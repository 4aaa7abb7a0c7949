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
# a pass's scratch buffers come from the heap rather than fresh mmaps (which cost ~10% of a step at 512).
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


class Scratch:
    """Chunk-sized buffers that every token chunk of one pass (forward or backward) reuses.

    Fresh (vocab x chunk) tensors were page-faulted anew in every training step, where the heap around
    them fills with the model's activations: measured ~3800 page faults and ~45% of the head's forward
    time a chunk (31.5 ms in a training step against 17 ms alone). So one set (~60 MB for a 49152-token
    vocabulary) lives as long as `compact_lm_head` is on (`scratch`, released by `release_scratch`).
    """

    def __init__(self, vocab: int, dtype: Any, device: Any) -> None:
        import torch

        size = vocab * TOKEN_CHUNK
        self.product = torch.empty(size, dtype=dtype, device=device)  # the matmul's output
        self.logits = torch.empty(size, dtype=torch.float32, device=device)
        self.work = torch.empty(size, dtype=torch.float32, device=device)
        self.flags = torch.empty(size, dtype=torch.bool, device=device)

    @staticmethod
    def take(buffer: Any, tokens: int) -> Any:
        """A contiguous (vocab x tokens) view at the start of `buffer`."""
        return buffer[: buffer.numel() // TOKEN_CHUNK * tokens].view(-1, tokens)


@functools.lru_cache(maxsize=1)
def scratch(vocab: int, dtype: Any, device: Any) -> Scratch:
    """The buffers of the current head (forward and backward never run at once)."""
    return Scratch(vocab, dtype, device)


def release_scratch() -> None:
    scratch.cache_clear()


def _logits(hidden: Any, weight: Any, scale: float, buffers: Scratch) -> Any:
    """Logits of one token chunk, vocabulary-major (vocab x tokens), fp32, times TRL's scale (logit
    scale / temperature), in `buffers.logits`. Vocabulary-major because oneDNN multiplies (vocab x hidden)
    @ (hidden x tokens) ~2.5x faster than (tokens x hidden) @ (hidden x vocab) here (6 vs 16 ms for 128
    tokens): the long side of the product is the contiguous weight's rows, not a transposed view."""
    import torch

    tokens = hidden.shape[0]
    product = torch.mm(weight, hidden.t(), out=Scratch.take(buffers.product, tokens))
    z = product if product.dtype == torch.float32 else Scratch.take(buffers.logits, tokens).copy_(product)
    return z.mul_(scale) if scale != 1.0 else z


def _forward_chunk(z: Any, targets: Any, buffers: Scratch) -> tuple[Any, ...]:
    """log p(target), log Z, entropy and is-top-1 (the target is the first argmax) of a chunk's
    vocabulary-major logits (vocab x tokens). Overwrites `z`."""
    import torch

    top = z.amax(0)  # amax is vectorized; logsumexp and argmax each cost ~8x more here
    target_z = z.gather(0, targets.unsqueeze(0)).squeeze(0)
    # "Top-1" is the first argmax, as TRL's kernel defines it (bf16 logits can tie). A target that reaches
    # the maximum alone is it; only tokens whose maximum is tied pay for an argmax, which runs ~10x slower
    # than this count over the vocabulary-major logits (a strided reduction plus a column gather).
    is_top1 = target_z >= top
    if is_top1.any():
        at_top = torch.eq(z, top, out=Scratch.take(buffers.flags, z.shape[1]))
        unsure = is_top1 & (at_top.sum(0, dtype=torch.int32) > 1)
        if unsure.any():
            is_top1[unsure] = z[:, unsure].argmax(0) == targets[unsure]
    shifted = torch.sub(z, top, out=Scratch.take(buffers.work, z.shape[1]))
    e = torch.exp(shifted, out=z)  # z is spent: its buffer takes exp(z - top)
    total = e.sum(0)
    log_z = top + total.log()
    # entropy = -sum p log p with p = e / total and log p = shifted - log(total)
    entropy = total.log() - e.mul_(shifted).sum(0) / total
    return target_z - log_z, log_z, entropy, is_top1


def _grad_chunk(
    hidden: Any, weight: Any, targets: Any, log_z: Any, grad: Any, scale: float, buffers: Scratch
) -> Any:
    """d(sum grad * log p(target)) / d hidden for one chunk: (onehot - p) * grad * scale, then @ weight."""
    import torch

    p = _logits(hidden, weight, scale, buffers).sub_(log_z).exp_()
    dz = p.mul_(grad.neg())
    dz.scatter_add_(0, targets.unsqueeze(0), grad.unsqueeze(0))
    if scale != 1.0:
        dz.mul_(scale)
    if dz.dtype != hidden.dtype:
        dz = Scratch.take(buffers.product, dz.shape[1]).copy_(dz)
    return torch.mm(dz.t(), weight)


@functools.cache
def _function() -> Any:
    """The autograd Function, built on first use so importing this module does not import torch."""
    import torch

    class LossPositionLogProbs(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any, scale: float) -> tuple[Any, ...]:
            dtype = _compute_dtype(hidden)
            h, w = hidden.to(dtype), weight.to(dtype)
            buffers = scratch(w.shape[0], dtype, h.device)
            chunks = [
                _forward_chunk(
                    _logits(h[i : i + TOKEN_CHUNK], w, scale, buffers), targets[i : i + TOKEN_CHUNK], buffers
                )
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
            buffers = scratch(w.shape[0], ctx.dtype, h.device)
            pieces = [
                _grad_chunk(h[r], w, targets[r], log_z[r], grad[r], ctx.scale, buffers)
                for r in (slice(i, i + TOKEN_CHUNK) for i in range(0, h.shape[0], TOKEN_CHUNK))
            ]
            return torch.cat(pieces).to(hidden.dtype), None, None, None

    return LossPositionLogProbs
