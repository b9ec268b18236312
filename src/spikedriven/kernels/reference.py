"""Plain-autograd multi-step LIF / PLIF: the ground truth the fused kernels are tested against.

One Python loop over T, ordinary torch ops, the spike produced by a Heaviside whose backward is the sigmoid
surrogate. The neuron state is fp32 whatever the input dtype; spikes come back in the input dtype.

    H[t] = V[t-1] + (X[t] - V[t-1]) / tau          (PLIF: + (X[t] - V[t-1]) * sigmoid(w))
    S[t] = 1 if H[t] >= v_th else 0
    V[t] = H[t] * (1 - S[t])                       (hard reset to 0, S detached in the reset)
    dS/dH := alpha * sig(alpha (H - v_th)) * (1 - sig(alpha (H - v_th)))
"""
from __future__ import annotations

import torch

__all__ = ["heaviside_sigmoid", "lif_reference", "plif_reference"]


class _HeavisideSigmoid(torch.autograd.Function):
    """Forward: z >= 0 (as z's dtype). Backward: grad * alpha * s * (1 - s), s = sigmoid(alpha z)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha: float):
        ctx.save_for_backward(z)
        ctx.alpha = alpha
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        s = torch.sigmoid(ctx.alpha * z)
        return grad * (ctx.alpha * s * (1 - s)), None


def heaviside_sigmoid(z: torch.Tensor, alpha: float = 4.0) -> torch.Tensor:
    return _HeavisideSigmoid.apply(z, float(alpha))


def lif_reference(
    x: torch.Tensor,
    v_threshold: float = 1.0,
    tau: float = 2.0,
    alpha: float = 4.0,
    return_v: bool = False,
):
    """Multi-step LIF on ``x`` of shape [T, ...]; returns spikes (and the post-reset V trace if ``return_v``)."""
    xs = x.float()
    v = xs.new_zeros(xs.shape[1:])
    spikes, vs = [], []
    for t in range(xs.shape[0]):
        h = v + (xs[t] - v) / tau
        s = heaviside_sigmoid(h - v_threshold, alpha)
        v = h * (1 - s.detach())
        spikes.append(s)
        if return_v:
            vs.append(v)
    out = torch.stack(spikes).to(x.dtype) if spikes else torch.empty_like(x)
    if return_v:
        return out, (torch.stack(vs) if vs else torch.empty_like(xs))
    return out


def plif_reference(
    x: torch.Tensor,
    w: torch.Tensor,
    v_threshold: float = 1.0,
    alpha: float = 4.0,
    return_v: bool = False,
):
    """Multi-step parametric LIF: 1/tau = sigmoid(w), ``w`` a learnable scalar tensor (gradient flows to it)."""
    xs = x.float()
    k = torch.sigmoid(w.float())
    v = xs.new_zeros(xs.shape[1:])
    spikes, vs = [], []
    for t in range(xs.shape[0]):
        h = v + (xs[t] - v) * k
        s = heaviside_sigmoid(h - v_threshold, alpha)
        v = h * (1 - s.detach())
        spikes.append(s)
        if return_v:
            vs.append(v)
    out = torch.stack(spikes).to(x.dtype) if spikes else torch.empty_like(x)
    if return_v:
        return out, (torch.stack(vs) if vs else torch.empty_like(xs))
    return out
