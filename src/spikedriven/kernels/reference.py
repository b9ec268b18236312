"""The reference multi-step LIF / PLIF: a Python loop over T with ordinary autograd, any surrogate.

This is the definition of correct that the fused kernels are tested against, and the "torch" backend. The
neuron state is fp32 whatever the input dtype (float64 stays float64); spikes come back in the input dtype.

    H[t] = V[t-1] + (X[t] - V[t-1]) / tau          (PLIF: + (X[t] - V[t-1]) * sigmoid(w))
    S[t] = 1 if H[t] >= v_th else 0                (backward: surrogate.derivative(H[t] - v_th))
    V[t] = H[t] * (1 - S[t])                       (hard reset to 0; S detached in the reset by default)
"""
from __future__ import annotations

import torch

from ..surrogate import Sigmoid, Surrogate, spike_fn

__all__ = ["lif_reference", "plif_reference", "heaviside_sigmoid"]


def heaviside_sigmoid(z: torch.Tensor, alpha: float = 4.0) -> torch.Tensor:
    """Heaviside forward, sigmoid-surrogate backward (the official spike function)."""
    return spike_fn(z, Sigmoid(alpha))


def _state_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _loop(x, charge, v_threshold, surrogate, detach_reset, return_v):
    xs = x.to(_state_dtype(x))
    v = xs.new_zeros(xs.shape[1:])
    spikes, vs = [], []
    for t in range(xs.shape[0]):
        h = charge(v, xs[t])
        s = spike_fn(h - v_threshold, surrogate)
        v = h * (1 - (s.detach() if detach_reset else s))
        spikes.append(s)
        if return_v:
            vs.append(v)
    out = torch.stack(spikes).to(x.dtype) if spikes else torch.empty_like(x)
    if return_v:
        return out, (torch.stack(vs) if vs else torch.empty_like(xs))
    return out


def _surrogate(surrogate: Surrogate | None, alpha: float) -> Surrogate:
    return surrogate if surrogate is not None else Sigmoid(alpha)


def lif_reference(x: torch.Tensor, v_threshold: float = 1.0, tau: float = 2.0, alpha: float = 4.0,
                  return_v: bool = False, *, surrogate: Surrogate | None = None, detach_reset: bool = True):
    """Multi-step LIF on ``x`` of shape [T, ...]; returns spikes (and the post-reset V trace if ``return_v``).

    ``surrogate`` (default ``Sigmoid(alpha)``) and ``detach_reset`` generalise the official neuron."""
    return _loop(x, lambda v, xt: v + (xt - v) / tau, v_threshold, _surrogate(surrogate, alpha), detach_reset,
                 return_v)


def plif_reference(x: torch.Tensor, w: torch.Tensor, v_threshold: float = 1.0, alpha: float = 4.0,
                   return_v: bool = False, *, surrogate: Surrogate | None = None, detach_reset: bool = True):
    """Multi-step parametric LIF: 1/tau = sigmoid(w), ``w`` a learnable scalar tensor (gradient flows to it)."""
    k = torch.sigmoid(w.to(_state_dtype(x)))
    return _loop(x, lambda v, xt: v + (xt - v) * k, v_threshold, _surrogate(surrogate, alpha), detach_reset,
                 return_v)
