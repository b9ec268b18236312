"""The dense (PyTorch) stepper: the model itself, one frame at a time, with every neuron's membrane carried.

The neurons of the library are stateless multi-step LIFs (the membrane starts at 0 inside every call). Every other
layer of V1 and V2 acts on each time step on its own in eval mode (convs, BatchNorm with running statistics,
pooling, the DVS Erode, V1's SDSA (a token sum within one step) and V2's linear attention (K^T V within one step)),
so running the network on one frame with each neuron resumed from its membrane gives exactly what the multi-step
network gives at that step. :class:`StepNeuron` is that resumed neuron: the reference update of
``kernels/reference.py`` for one step, starting from the carried membrane.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..neuron import LIF, ParametricLIF, SpikingNeuron, neurons
from ..surrogate import spike_fn

__all__ = ["StepNeuron", "DenseStepper"]


def _state_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32  # as kernels/reference.py


class StepNeuron(nn.Module):
    """One step of a wrapped LIF / PLIF on ``[1, ...]``, resuming from ``store[name]`` and writing the new membrane
    back (the update of ``kernels.reference``: same operations, same order, so the spikes are bit-identical)."""

    def __init__(self, neuron: SpikingNeuron, name: str, store: dict):
        super().__init__()
        if not isinstance(neuron, (LIF, ParametricLIF)):
            raise TypeError(f"{name}: streaming supports LIF and ParametricLIF neurons, not {type(neuron).__name__}")
        object.__setattr__(self, "neuron", neuron)  # not a submodule: neurons() must not find it twice
        self.name, self.store = name, store

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1:
            raise ValueError(f"{self.name}: a stepping neuron takes one time step [1, ...], got {tuple(x.shape)}")
        n = self.neuron
        xs = x[0].to(_state_dtype(x))
        v = self.store.get(self.name)
        if v is None:
            v = xs.new_zeros(xs.shape)
        elif v.shape != xs.shape or v.dtype != xs.dtype:
            raise ValueError(f"the carried membrane of {self.name} is {v.dtype} {list(v.shape)} but this step brings "
                             f"{xs.dtype} {list(xs.shape)}: a different batch size, frame size or dtype than the "
                             f"steps before (call reset() first)")
        if isinstance(n, ParametricLIF):
            h = v + (xs - v) * torch.sigmoid(n.w.to(xs.dtype))
        else:
            h = v + (xs - v) / n.tau
        s = spike_fn(h - n.v_threshold, n.surrogate)
        self.store[self.name] = h * (1 - s)
        return s.to(x.dtype)[None]


class DenseStepper:
    """A private eval-mode copy of ``model`` (V1 or V2) whose neurons are :class:`StepNeuron` s sharing one store.

    ``step(frame)`` -> per-step head outputs ``{"head": [B, K]}`` (and ``"head_kd"`` for a V2 model built with kd),
    or ``{"features": [B, D]}`` (the head spikes) for a model without a classifier.
    """

    def __init__(self, model: nn.Module):
        family = getattr(model, "family", None)
        if family not in ("sdt", "sdt_v2"):
            raise ValueError(f"streaming runs the families 'sdt' (V1) and 'sdt_v2' (V2), which carry membranes "
                             f"from one time step to the next (V3's base models take one image at one step); got "
                             f"{type(model).__name__} (family {family!r})")
        m = copy.deepcopy(model).eval()
        m.T = 1  # one frame per call: the input check then asks for [B, 1, C, H, W]
        self.store: dict[str, torch.Tensor] = {}
        self.names = []
        for name, mod in neurons(m):
            parent_name, _, attr = name.rpartition(".")
            parent = m.get_submodule(parent_name) if parent_name else m
            setattr(parent, attr, StepNeuron(mod, name, self.store))
            self.names.append(name)
        self.model, self.family = m, family
        self.head_lif = m.head_lif if family == "sdt" else m.lif

    @torch.no_grad()
    def step(self, frame: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.model
        s = self.head_lif(m.forward_features(frame[:, None]))[0]  # [B, D] head spikes of this step
        if isinstance(m.head, nn.Identity):
            return {"features": s}
        out = {"head": m.head(s)}
        if self.family == "sdt_v2" and m.kd:
            out["head_kd"] = m.head_kd(s)
        return out
