"""Agreement of the V3 engine with the E-SpikeFormer model: every integer neuron's activations (0..D) compared
element by element, and where they differ, where the differences start and how far the model's pre-activation was
from a rounding boundary (k + 0.5: a float tie after BN folding and another summation order)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..neuron import IntegerNeuron
from ..probe import run_observed
from .agreement import Agreement

__all__ = ["model_integers", "compare_v3"]


@torch.no_grad()
def model_integers(model: nn.Module, x: torch.Tensor):
    """The integers (uint8) every integer neuron of the (integer-form) model emits, its inputs (float64) and the
    logits, for ``x``; names in execution order."""
    if getattr(model, "is_spike_form", False):
        raise ValueError("compare the integer E-SpikeFormer, not its spike-driven form")
    ints: dict[str, np.ndarray] = {}
    xin: dict[str, np.ndarray] = {}

    def hook(name):
        def fn(m, a, y):
            ints[name] = torch.round(y.detach().double() * m.norm).to(torch.uint8).contiguous().numpy()
            xin[name] = a[0].detach().double().contiguous().numpy()
        return fn

    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, IntegerNeuron)]
    (logits,) = run_observed(model, [x], post=[(m, hook(n)) for n, m in mods])
    return ints, xin, logits


def _margin(x: np.ndarray, D: int) -> np.ndarray:
    """Distance of each pre-activation from the nearest rounding boundary k + 0.5 (k = 0..D-1)."""
    nb = np.clip(np.round(x - 0.5) + 0.5, 0.5, D - 0.5)
    return np.abs(x - nb)


@torch.no_grad()
def compare_v3(model: nn.Module, engine, x: torch.Tensor, origins: bool = True) -> Agreement:
    """:func:`spikedriven.engine.compare_with_model` for V3: ``neurons`` counts integer activations (one per neuron
    and sample), ``mismatched`` those whose integer differs; origins: per sample, the first neuron layer (execution
    order) with a difference, each differing activation there, and the model's distance from a rounding boundary."""
    ref, xin, logits = model_integers(model, x)
    res = engine.run(x, record=True)
    ag = Agreement()
    B = x.shape[0]
    flip = np.zeros(B, bool)
    D = int(model.D)
    for name, r in ref.items():
        s = res.spikes.get(name)
        if s is None:
            continue
        if s.size != r.size:
            raise AssertionError(f"{name}: engine activations {s.shape} vs model {r.shape}")
        d = (r != s.reshape(r.shape)).reshape(B, -1)
        ag.per_layer[name] = (int(d.sum()), d.size)
        ag.neurons += d.size
        ag.mismatched += int(d.sum())
        hit = d.any(1) & ~flip
        if origins and hit.any():
            m = _margin(xin[name].reshape(B, -1), D)
            for b in np.flatnonzero(hit):
                j = np.flatnonzero(d[b])
                ag.origins += len(j)
                ag.origin_layers[name] = ag.origin_layers.get(name, 0) + len(j)
                ag.origin_margins += [float(v) for v in m[b, j]]
        flip |= d.any(1)
    lg_m, lg_e = logits.float().numpy(), res.logits
    ag.samples = B
    ag.same_prediction = int((lg_m.argmax(-1) == lg_e.argmax(-1)).sum())
    ag.samples_with_flip = int(flip.sum())
    ag.max_logit_diff = float(np.abs(lg_m - lg_e).max())
    return ag
