"""Spike-driven verifier: run a model and prove the paper's property on that input.

The property (paper §3): every conv/linear layer except the encoding (first) layer receives a binary spike
tensor, so each synaptic operation is an addition; and SDSA uses only masks (Hadamard products between
binary tensors) and additions (column sums of binary tensors). The verifier hooks the *actual* inputs of
every ``nn.Conv2d``/``nn.Linear`` and of the SDSA primitives (``SpikeMask``, ``TokenSum``, ``SpikeMatmul``)
and reports each violation with the layer name and sample offending values.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .layers.ops import SpikeMask, SpikeMatmul, TokenSum
from .neuron import SpikingNeuron
from .probe import bn_is_calibrated, calibrate_bn, run_observed

__all__ = ["LayerCheck", "SpikeDrivenReport", "verify_spike_driven", "is_binary", "default_input"]


def is_binary(t: torch.Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


def _offending(t: torch.Tensor, k: int = 6) -> list[float]:
    bad = t[(t != 0) & (t != 1)]
    vals = torch.unique(bad.detach().float().flatten()[:100_000])
    return [round(float(v), 6) for v in vals[:k]]


@dataclass
class LayerCheck:
    name: str
    kind: str  # conv, linear, mask, token_sum, matmul, neuron
    binary: bool
    rate: float  # fraction of non-zero entries in the checked input
    exempt: bool = False  # the encoding layer
    offending: list[float] = field(default_factory=list)
    note: str = ""


@dataclass
class SpikeDrivenReport:
    checks: list[LayerCheck]
    attn_mode: str = "?"
    shortcut: str = "?"
    bn_calibrated_on_input: bool = False

    @property
    def violations(self) -> list[LayerCheck]:
        return [c for c in self.checks if not c.binary and not c.exempt]

    @property
    def ok(self) -> bool:
        return not self.violations

    def __bool__(self) -> bool:  # `if report:` reads as "is spike-driven"
        return self.ok

    def summary(self) -> str:
        n_syn = sum(c.kind in ("conv", "linear") for c in self.checks)
        n_sdsa = sum(c.kind in ("mask", "token_sum", "matmul") for c in self.checks)
        head = (f"spike-driven: {'YES' if self.ok else 'NO'} (attn_mode={self.attn_mode}, shortcut={self.shortcut}; "
                f"{n_syn} conv/linear inputs and {n_sdsa} attention primitives checked, "
                f"{len(self.violations)} violation(s))")
        if self.bn_calibrated_on_input:
            head += "\n  (untrained model: BatchNorm statistics were calibrated on the input so that neurons fire)"
        lines = [head]
        for c in self.checks:
            status = "exempt (encoding layer)" if c.exempt else ("binary" if c.binary else "NOT BINARY")
            extra = f" offending values e.g. {c.offending}" if c.offending and not c.exempt else ""
            note = f"  [{c.note}]" if c.note else ""
            lines.append(f"  {c.kind:9s} {c.name:45s} rate={c.rate:.4f}  {status}{extra}{note}")
        return "\n".join(lines)

    __str__ = summary


def default_input(model: nn.Module, batch: int, generator: torch.Generator) -> torch.Tensor:
    size = getattr(model, "img_size", 32)
    cin = getattr(model, "in_channels", 3)
    if cin == 2:  # DVS polarity frames: non-negative event counts, one frame per time step
        return torch.poisson(torch.full((batch, model.T, cin, size, size), 0.3), generator=generator)
    return torch.randn(batch, cin, size, size, generator=generator)


@torch.no_grad()
def verify_spike_driven(model: nn.Module, x: torch.Tensor | None = None, batch: int = 2, seed: int = 0,
                        check_neurons: bool = True, calibrate: bool = True) -> SpikeDrivenReport:
    """Run ``model`` (in eval mode) on ``x`` (random if None) and check the spike-driven property.

    If the model's BatchNorms have never seen data (untrained), a copy with BN statistics calibrated on ``x``
    is checked instead (``calibrate=False`` disables this), so that neurons actually fire.
    """
    gen = torch.Generator().manual_seed(seed)
    if x is None:
        x = default_input(model, batch, gen)
    calibrated_here = False
    if calibrate and not bn_is_calibrated(model):
        # Untrained: with initial BN stats almost nothing fires in eval mode and the check would be vacuous.
        model = calibrate_bn(copy.deepcopy(model), [x])
        calibrated_here = True
    checks: list[LayerCheck] = []
    state = {"first_synaptic_seen": False}

    def syn_hook(name, kind):
        def hook(mod, args):
            t = args[0]
            exempt = not state["first_synaptic_seen"]
            state["first_synaptic_seen"] = True
            b = is_binary(t)
            checks.append(LayerCheck(name, kind, b, float((t != 0).float().mean()), exempt,
                                     [] if b else _offending(t),
                                     "real-valued input is expected here" if exempt else
                                     ("" if b else "non-binary input: the synaptic ops would be multiply-accumulates")))
        return hook

    def prim_hook(name, kind):
        def hook(mod, args):
            for i, t in enumerate(args):
                b = is_binary(t)
                note = ""
                if not b:
                    note = {"mask": "Hadamard product with a non-binary operand is a multiplication, not a mask",
                            "token_sum": "sum of non-binary values",
                            "matmul": "matrix product with a non-binary operand needs multiplications"}[kind]
                checks.append(LayerCheck(f"{name}[arg{i}]", kind, b, float((t != 0).float().mean()), False,
                                         [] if b else _offending(t), note))
        return hook

    def neuron_hook(name):
        def hook(mod, args, out):
            b = is_binary(out)
            checks.append(LayerCheck(f"{name}(output)", "neuron", b, float((out != 0).float().mean()), False,
                                     [] if b else _offending(out), "" if b else "neuron emitted non-binary values"))
        return hook

    pre, post = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Conv1d, nn.Linear)):
            pre.append((mod, syn_hook(name, "linear" if isinstance(mod, nn.Linear) else "conv")))
        elif isinstance(mod, SpikeMask):
            pre.append((mod, prim_hook(name, "mask")))
        elif isinstance(mod, TokenSum):
            pre.append((mod, prim_hook(name, "token_sum")))
        elif isinstance(mod, SpikeMatmul):
            pre.append((mod, prim_hook(name, "matmul")))
        elif check_neurons and isinstance(mod, SpikingNeuron):
            post.append((mod, neuron_hook(name)))
    run_observed(model, [x], pre=pre, post=post)
    return SpikeDrivenReport(checks, getattr(model, "attn_mode", "?"), getattr(model, "shortcut", "?"),
                             calibrated_here)
