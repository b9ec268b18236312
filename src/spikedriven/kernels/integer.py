"""V3's integer neuron as ops: the quantiser with its straight-through gradient, and the integer -> spikes expansion.

``multispike(x, D, norm)`` = ``round(clamp(x, 0, D)) / norm`` (round half to even, as ``torch.round``); its gradient
is ``grad / norm`` where ``0 <= x <= D`` and 0 elsewhere (official ``Quant``). The autograd Function saves that
mask as bool (1 byte per element) instead of the float input the official code keeps (4 bytes): same gradient, a
quarter of the activation memory of every neuron. Elementwise torch ops, so it runs on every device and dtype;
``torch.compile`` fuses it where used.
"""
from __future__ import annotations

import torch

__all__ = ["multispike", "multispike_reference", "quantise_int", "integer_to_spikes"]


class _MultiSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, D, norm):
        ctx.save_for_backward((x >= 0) & (x <= D))
        ctx.norm = norm
        return torch.round(torch.clamp(x, 0, D)) / norm

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad / ctx.norm, torch.zeros((), dtype=grad.dtype, device=grad.device)), None, None


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


def multispike(x: torch.Tensor, D: int = 4, norm: float = 4.0, backend: str = "auto") -> torch.Tensor:
    """``round(clamp(x, 0, D)) / norm`` with V3's gradient. ``backend="torch"``: the reference formulation;
    every other backend runs the mask-saving Function (the same arithmetic on any device)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"multispike expects a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    from . import requested_backend  # the one reader of the backend environment variable

    if requested_backend(backend) == "torch":
        return multispike_reference(x, D, norm)
    return _MultiSpike.apply(x, D, float(norm))


def quantise_int(x: torch.Tensor, D: int) -> torch.Tensor:
    """The integer ``round(clamp(x, 0, D))`` (no gradient; the spike-driven form is for inference)."""
    return torch.round(torch.clamp(x.detach(), 0, D))


def integer_to_spikes(v: torch.Tensor, D: int) -> torch.Tensor:
    """Integers ``v`` in 0..D ``[N, ...]`` -> binary spikes ``[D * N, ...]``: virtual step i (block i of dim 0)
    fires where ``v > i``, so the first v of the D steps fire and the steps sum back to v."""
    steps = torch.arange(D, dtype=v.dtype, device=v.device).view(D, *([1] * v.ndim))
    return (v.unsqueeze(0) > steps).to(v.dtype).flatten(0, 1)
