"""LoRA linear layers as one autograd function in the autocast dtype: matmuls only, no per-call casts.

PEFT 0.21's `lora.Linear.forward` casts each layer's input to the adapter's fp32 dtype (a copy that
autocast then undoes with another), scales the adapter output with a full-size multiply, and adds it to the
base output; backward repeats each step in reverse and accumulates the input gradient with one more add.
Profiled on the 135M model those elementwise passes over (tokens x width) tensors cost more than the
model's matmuls. `LoraLinear` computes the same thing as `x @ W.T + (x @ A.T) @ (s * B).T`: the scale is
folded into the tiny B, the adapter product is accumulated into the base output by `addmm_`, and backward
writes both input-gradient terms into one buffer. The fp32 adapter weights (the optimizer's master copy)
are cast to the compute dtype per call, as autocast does; their gradients come back in fp32.

`use_fused_lora(model)` swaps the forward of every PEFT `lora.Linear` it can handle (plain LoRA or rsLoRA,
no dropout, one active adapter, unmerged); anything else (DoRA, dropout, mixed adapter batches) keeps PEFT's.
"""

from __future__ import annotations

import functools
from typing import Any


def use_fused_lora(model: Any) -> int:
    """Route eligible PEFT LoRA linears through `LoraLinear`; returns how many were switched."""
    from peft.tuners.lora.layer import Linear

    switched = 0
    for module in model.modules():
        if isinstance(module, Linear) and _eligible(module):
            module.forward = functools.partial(_fused_forward, module, module.forward)  # type: ignore[method-assign]
            switched += 1
    return switched


def _eligible(layer: Any) -> bool:
    """Plain LoRA on an unmerged nn.Linear with no dropout: the case `LoraLinear` computes exactly."""
    import torch

    active = list(layer.active_adapters)
    if layer.disable_adapters or layer.merged or len(active) != 1:
        return False
    name = active[0]
    return (
        name in layer.lora_A
        and name not in layer.lora_variant
        and isinstance(layer.lora_dropout[name], torch.nn.Identity)
        and type(layer.base_layer) is torch.nn.Linear
        and not layer.base_layer.weight.requires_grad  # the frozen base gets no gradient here
    )


def _fused_forward(layer: Any, original: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    # Checked per call: adapters can be disabled, merged or switched after the swap (PEFT's own paths).
    if args or kwargs or not _eligible(layer):
        return original(x, *args, **kwargs)
    (name,) = layer.active_adapters
    base = layer.base_layer
    return _function().apply(
        x, base.weight, base.bias, layer.lora_A[name].weight, layer.lora_B[name].weight, layer.scaling[name]
    )


@functools.cache
def _function() -> Any:
    """The autograd Function, built on first use so importing this module does not import torch."""
    import torch

    class LoraLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, bias: Any, a: Any, b: Any, scaling: float) -> Any:
            device = x.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
            rows = x.reshape(-1, x.shape[-1]).to(dtype)
            w, a_c, b_s = weight.to(dtype), a.to(dtype), (b * scaling).to(dtype)
            xa = rows @ a_c.t()
            out = torch.nn.functional.linear(rows, w, None if bias is None else bias.to(dtype))
            out.addmm_(xa, b_s.t())
            ctx.save_for_backward(rows, w, a_c, b_s, xa)
            ctx.scaling, ctx.x_shape, ctx.x_dtype = scaling, x.shape, x.dtype
            ctx.a_dtype, ctx.b_dtype = a.dtype, b.dtype
            return out.view(*x.shape[:-1], w.shape[0])

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple[Any, ...]:
            rows, w, a_c, b_s, xa = ctx.saved_tensors
            g = grad.reshape(-1, w.shape[0]).to(w.dtype)
            gb = g @ b_s  # gradient at the adapter's rank-r bottleneck, already scaled
            grad_x = grad_a = grad_b = grad_bias = None
            if ctx.needs_input_grad[0]:
                grad_x = (g @ w).addmm_(gb, a_c).view(ctx.x_shape).to(ctx.x_dtype)
            if ctx.needs_input_grad[2]:
                grad_bias = g.sum(0)
            if ctx.needs_input_grad[3]:
                grad_a = (gb.t() @ rows).to(ctx.a_dtype)
            if ctx.needs_input_grad[4]:
                grad_b = (g.t() @ xa).to(ctx.b_dtype).mul_(ctx.scaling)
            return grad_x, None, grad_bias, grad_a, grad_b, None

    return LoraLinear
