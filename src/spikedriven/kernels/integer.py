"""V3's integer neuron as ops: the quantiser with its straight-through gradient, and the integer -> spikes expansion.

``multispike(x, D, norm)`` = ``round(clamp(x, 0, D)) / norm`` (round half to even, as ``torch.round``); its gradient
is ``grad / norm`` where ``0 <= x <= D`` and 0 elsewhere (official ``Quant``). The autograd Function saves that
mask (1 byte per element) instead of the float input the official code keeps (4 bytes): same gradient, a quarter
of the activation memory of every neuron. On CPU a fused C++ kernel (``csrc/multispike_cpu.cpp``) does each pass
in one sweep; elsewhere elementwise torch ops run (every device and dtype).
"""
from __future__ import annotations

import torch

__all__ = ["multispike_reference", "quantise_int", "integer_to_spikes", "MultiSpikeTorch", "MultiSpikeCpp", "FAST_DTYPES"]


class MultiSpikeTorch(torch.autograd.Function):
    """Elementwise torch ops, any device and dtype; saves the in-range mask as bool."""

    @staticmethod
    def forward(ctx, x, D, norm):
        ctx.save_for_backward(~((x < 0) | (x > D)))  # NaN passes the gradient, as the official mask
        ctx.norm = norm
        return torch.round(torch.clamp(x, 0, D)) / norm

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad / ctx.norm * inside, None, None


class MultiSpikeCpp(torch.autograd.Function):
    """The fused C++ kernel (csrc/multispike_cpu.cpp): one pass each way, a uint8 mask saved; the input's dense
    layout (NCHW or channels_last) is kept."""

    @staticmethod
    def forward(ctx, x, D, norm):
        need = bool(ctx.needs_input_grad[0])
        y, mask = torch.ops.spikedriven_int.multispike_fwd(x, D, norm, need)
        ctx.save_for_backward(mask)
        ctx.norm = norm
        return y

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        if grad.stride() != mask.stride():
            grad = torch.empty_like(mask, dtype=grad.dtype).copy_(grad)
        return torch.ops.spikedriven_int.multispike_bwd(grad, mask, ctx.norm), None, None


FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def multispike_reference(x: torch.Tensor, D: int, norm: float) -> torch.Tensor:
    """The official formulation in plain autograd (the definition the fused path is tested against)."""

    class _Quant(torch.autograd.Function):
        @staticmethod
        def forward(ctx, i):
            ctx.save_for_backward(i)
            return torch.round(torch.clamp(i, min=0, max=D))

        @staticmethod
        def backward(ctx, g):
            (i,) = ctx.saved_tensors
            g = g.clone()
            g[i < 0] = 0
            g[i > D] = 0
            return g

    return _Quant.apply(x) / norm


def quantise_int(x: torch.Tensor, D: int) -> torch.Tensor:
    """The integer ``round(clamp(x, 0, D))`` (no gradient; the spike-driven form is for inference)."""
    return torch.round(torch.clamp(x.detach(), 0, D))


def integer_to_spikes(v: torch.Tensor, D: int) -> torch.Tensor:
    """Integers ``v`` in 0..D ``[N, ...]`` -> binary spikes ``[D * N, ...]``: virtual step i (block i of dim 0)
    fires where ``v > i``, so the first v of the D steps fire and the steps sum back to v."""
    steps = torch.arange(D, dtype=v.dtype, device=v.device).view(D, *([1] * v.ndim))
    return (v.unsqueeze(0) > steps).to(v.dtype).flatten(0, 1)
