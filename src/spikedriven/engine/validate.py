"""Checks of the engine against the PyTorch model: spike agreement, logits, and SOPs = T x rate x FLOPs."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..neuron import neurons
from ..probe import run_observed

__all__ = ["expected_sops", "compare_with_model", "Agreement", "model_spikes"]


@torch.no_grad()
def expected_sops(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """The energy report's operation counts for ``x``, from hooks on the model's actual conv/linear inputs.

    Encoding layer (first conv): MACs = FLOPs x B (x T for event input; a static image is identical at every
    step, so it is counted once, as in the paper). Every other conv/linear: SOPs = T x fr_in x FLOPs x B with
    fr_in = fraction of non-zero entries of its input over all steps and samples, FLOPs = k^2 H_out W_out C_in
    C_out (linear: in x out). Totals over the batch, float64. Comparable to ``LayerCount.nominal``.
    """
    T = int(model.T)
    out: dict[str, float] = {}
    first = {"seen": False}

    def hook(name):
        def fn(mod, args, y):
            inp = args[0]
            if isinstance(mod, nn.Linear):
                flops = mod.in_features * mod.out_features
                B = inp.shape[1] if inp.ndim == 3 else inp.shape[0] // T
            else:
                kh, kw = mod.kernel_size
                flops = kh * kw * y.shape[-2] * y.shape[-1] * mod.in_channels * mod.out_channels
                B = inp.shape[0] // T
            if not first["seen"]:
                first["seen"] = True
                out[name] = float(flops) * B * (T if x.ndim == 5 else 1)
                return
            rate = float(torch.count_nonzero(inp)) / inp.numel()
            out[name] = T * rate * float(flops) * B
        return fn

    run_observed(model, [x], post=[(mod, hook(name)) for name, mod in model.named_modules()
                                   if isinstance(mod, (nn.Conv2d, nn.Linear))])
    return out


@torch.no_grad()
def model_spikes(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """Spikes of every neuron layer that runs (name -> uint8 array, engine layouts) and the logits."""
    rec: dict[str, np.ndarray] = {}

    def hook(name):
        def fn(m, a, y):
            y = y.detach()
            if name.endswith("talking_heads_lif"):  # [T,B,h,1,d] -> [T,B,D] (c = head*d + lane)
                y = y.reshape(y.shape[0], y.shape[1], -1)
            rec[name] = y.to(torch.uint8).contiguous().numpy()
        return fn

    (logits,) = run_observed(model, [x], post=[(mod, hook(name)) for name, mod in neurons(model)])
    return rec, logits


@dataclass
class Agreement:
    neurons: int = 0
    mismatched: int = 0
    per_layer: dict = field(default_factory=dict)  # name -> (mismatched, neurons)
    samples: int = 0
    same_prediction: int = 0
    samples_with_flip: int = 0
    max_logit_diff: float = 0.0

    @property
    def fraction(self) -> float:
        return 1.0 - self.mismatched / self.neurons if self.neurons else 1.0

    def update(self, other: "Agreement") -> "Agreement":
        self.neurons += other.neurons
        self.mismatched += other.mismatched
        for k, (m, n) in other.per_layer.items():
            a, b = self.per_layer.get(k, (0, 0))
            self.per_layer[k] = (a + m, b + n)
        self.samples += other.samples
        self.same_prediction += other.same_prediction
        self.samples_with_flip += other.samples_with_flip
        self.max_logit_diff = max(self.max_logit_diff, other.max_logit_diff)
        return self

    def summary(self) -> str:
        lines = [f"spike agreement {self.fraction:.6%} ({self.mismatched} of {self.neurons} neuron-steps differ; "
                 f"{self.samples_with_flip} of {self.samples} samples have any flip); same prediction "
                 f"{self.same_prediction}/{self.samples}; max |logit diff| {self.max_logit_diff:.3g}"]
        for k, (m, n) in self.per_layer.items():
            if m:
                lines.append(f"  {k:40s} {m} / {n}")
        return "\n".join(lines)


@torch.no_grad()
def compare_with_model(model: nn.Module, engine, x: torch.Tensor) -> Agreement:
    """Run both on ``x``; count neuron-steps whose spike differs (every neuron layer, every t) and predictions."""
    ref, logits = model_spikes(model, x)
    res = engine.run(x, record=True)
    ag = Agreement()
    B = x.shape[0]
    flip = np.zeros(B, bool)
    for name, s in res.spikes.items():
        if name not in ref:
            continue
        r = ref[name]
        if r.shape != s.shape:
            raise AssertionError(f"{name}: engine spikes {s.shape} vs model {r.shape}")
        d = r != s
        ag.per_layer[name] = (int(d.sum()), d.size)
        ag.neurons += d.size
        ag.mismatched += int(d.sum())
        flip |= d.reshape(d.shape[0], B, -1).any(axis=(0, 2))
    lg_m = logits.float().numpy()
    lg_e = res.logits
    if lg_m.ndim == 3:
        lg_m, lg_e = lg_m.mean(0), lg_e.mean(0)
    ag.samples = B
    ag.same_prediction = int((lg_m.argmax(-1) == lg_e.argmax(-1)).sum())
    ag.samples_with_flip = int(flip.sum())
    ag.max_logit_diff = float(np.abs(lg_m - lg_e).max())
    return ag
