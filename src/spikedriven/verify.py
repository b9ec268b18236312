"""Spike-driven verifier: run a model and prove the paper's property on that input.

The property (paper §3): every conv/linear layer except the encoding (first) layer receives a binary spike
tensor, so each synaptic operation is an addition; and the attention uses only masks (Hadamard products between
binary tensors) and additions. The verifier hooks the *actual* inputs of every conv/linear layer and of the
attention primitives (``SpikeMask``, ``TokenSum``, ``SpikeMatmul``, ``SpikeRowMatmul``) of the model's
**inference form** (BatchNorms and V2's RepConvs folded, as deployed) and reports each violation with the layer
name and sample offending values.

It also says what is not mask-and-add in an honest model: the encoding layer (real-valued image), layers a
family declares real-valued (``nonbinary_input`` on the module: V2's SepConv ``pwconv2`` after the depthwise
conv) and products of binary rows with integer rows (V2's Q (Kᵀ V): additions of integer rows). A layer that
received no spike at all on the input proves nothing: it is reported as unchecked, and an untrained model is
checked with BatchNorm statistics calibrated on the input.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .inference import deployed_form, expands_spikes
from .layers.attention import Attention
from .layers.ops import SpikeMask, SpikeMatmul, TokenSum
from .neuron import Neuron
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
    exempt: bool = False  # a declared non-binary input (the encoding layer, ...): see note
    offending: list[float] = field(default_factory=list)
    note: str = ""


@dataclass
class SpikeDrivenReport:
    checks: list[LayerCheck]
    attn_mode: str = "?"
    shortcut: str = "?"
    bn_calibrated_on_input: bool = False
    inference_form: bool = True
    form: str = "BN/RepConv folded"

    @property
    def violations(self) -> list[LayerCheck]:
        return [c for c in self.checks if not c.binary and not c.exempt]

    @property
    def exemptions(self) -> list[LayerCheck]:
        """Declared non-binary inputs: what is not mask-and-add in a spike-driven model, and why."""
        return [c for c in self.checks if c.exempt]

    @property
    def silent(self) -> list[LayerCheck]:
        """Synaptic layers that received no spike on this input: their binary check proves nothing."""
        return [c for c in self.checks if c.kind in ("conv", "linear") and not c.exempt and c.rate == 0.0]

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def conclusive(self) -> bool:
        return self.ok and not self.silent

    def __bool__(self) -> bool:  # `if report:` reads as "is spike-driven"
        return self.ok

    def summary(self) -> str:
        n_syn = sum(c.kind in ("conv", "linear") for c in self.checks)
        n_att = sum(c.kind in ("mask", "token_sum", "matmul") for c in self.checks)
        verdict = "NO" if not self.ok else ("YES" if not self.silent else "YES on the layers that received spikes")
        head = (f"spike-driven: {verdict} (attn_mode={self.attn_mode}, shortcut={self.shortcut}; {n_syn} conv/linear "
                f"inputs and {n_att} attention primitives checked, {len(self.violations)} violation(s)"
                + (f", inference form: {self.form}" if self.inference_form else "") + ")")
        lines = [head]
        if self.bn_calibrated_on_input:
            lines.append("  (BatchNorm statistics were calibrated on the input so that neurons fire: the model was "
                         "untrained or its neurons were silent)")
        if self.silent:
            lines.append(f"  WARNING: {len(self.silent)} layer(s) received no spike on this input, so their check "
                         f"proves nothing: {', '.join(c.name for c in self.silent[:6])}"
                         + (" ..." if len(self.silent) > 6 else "") + " (use trained weights or more/other input)")
        if self.exemptions and self.ok:
            kinds = dict.fromkeys(c.note for c in self.exemptions)
            lines.append("  not mask-and-add, by design: " + "; ".join(kinds))
        for c in self.checks:
            status = "declared non-binary" if c.exempt else ("binary" if c.binary else "NOT BINARY")
            extra = f" offending values e.g. {c.offending}" if c.offending and not c.exempt else ""
            note = f"  [{c.note}]" if c.note else ""
            lines.append(f"  {c.kind:9s} {c.name:45s} rate={c.rate:.4f}  {status}{extra}{note}")
        return "\n".join(lines)

    __str__ = summary


def default_input(model: nn.Module, batch: int, generator: torch.Generator) -> torch.Tensor:
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    size = getattr(model, "img_size", 32)
    cin = getattr(model, "in_channels", 3)
    if cin == 2:  # DVS polarity frames: non-negative event counts, one frame per time step
        return torch.poisson(torch.full((batch, model.T, cin, size, size), 0.3), generator=generator)
    return torch.randn(batch, cin, size, size, generator=generator)


_PRIM_NOTES = {"mask": "Hadamard product with a non-binary operand is a multiplication, not a mask",
               "token_sum": "sum of non-binary values",
               "matmul": "matrix product with a non-binary operand needs multiplications"}


def _checks(model: nn.Module, x: torch.Tensor, check_neurons: bool) -> list[LayerCheck]:
    checks: list[LayerCheck] = []
    state = {"first_synaptic_seen": False}

    def rate(t):
        return float((t != 0).float().mean()) if t.numel() else 0.0

    def syn_hook(name, kind, declared):
        def hook(mod, args):
            t = args[0]
            first = not state["first_synaptic_seen"]
            state["first_synaptic_seen"] = True
            b = is_binary(t)
            if first:
                note = "encoding layer: real-valued input is expected here (MACs)"
            elif declared and not b:
                note = declared
            else:
                note = "" if b else "non-binary input: the synaptic ops would be multiply-accumulates"
            checks.append(LayerCheck(name, kind, b, rate(t), first or (bool(declared) and not b),
                                     [] if b else _offending(t), note))
        return hook

    def prim_hook(name, kind, integer_operand):
        def hook(mod, args):
            for i, t in enumerate(args):
                b = is_binary(t)
                if integer_operand == i and not b and is_binary(args[1 - i]):  # spikes select integer rows
                    checks.append(LayerCheck(f"{name}[arg{i}]", kind, b, rate(t), True, [],
                                             "binary x integer matrix product: additions of integer rows "
                                             "(or columns) selected by the spikes"))
                    continue
                checks.append(LayerCheck(f"{name}[arg{i}]", kind, b, rate(t), False, [] if b else _offending(t),
                                         "" if b else _PRIM_NOTES[kind]))
        return hook

    def neuron_hook(name):
        def hook(mod, args, out):
            b = is_binary(out)
            checks.append(LayerCheck(f"{name}(output)", "neuron", b, rate(out), False,
                                     [] if b else _offending(out), "" if b else "neuron emitted non-binary values"))
        return hook

    pre, post = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Conv1d, nn.Linear)):
            pre.append((mod, syn_hook(name, "linear" if isinstance(mod, nn.Linear) else "conv",
                                      getattr(mod, "nonbinary_input", ""))))
        elif isinstance(mod, SpikeMask):
            pre.append((mod, prim_hook(name, "mask", None)))
        elif isinstance(mod, TokenSum):
            pre.append((mod, prim_hook(name, "token_sum", None)))
        elif isinstance(mod, SpikeMatmul):
            pre.append((mod, prim_hook(name, "matmul", mod.integer_operand)))
        elif check_neurons and isinstance(mod, Neuron):
            post.append((mod, neuron_hook(name)))
    run_observed(model, [x], pre=pre, post=post)
    return checks


@torch.no_grad()
def verify_spike_driven(model: nn.Module, x: torch.Tensor | None = None, batch: int = 2, seed: int = 0,
                        check_neurons: bool = True, calibrate: bool = True,
                        inference_form: bool = True) -> SpikeDrivenReport:
    """Run ``model`` (in eval mode, its inference form unless ``inference_form=False``) on ``x`` (random if None)
    and check the spike-driven property. The model itself is not modified.

    If the model's BatchNorms have never seen data, or its synaptic layers receive no spike at all on ``x`` (e.g.
    after a single training-mode forward), a copy with BN statistics calibrated on ``x`` is checked instead
    (``calibrate=False`` disables this). Layers that still see no spike are reported as unchecked (a warning).
    """
    gen = torch.Generator().manual_seed(seed)
    if x is None:
        x = default_input(model, batch, gen)

    def check(m):
        m = deployed_form(m) if inference_form else copy.deepcopy(m).eval()
        return _checks(m, x, check_neurons)

    calibrated_here = False
    if calibrate and not bn_is_calibrated(model):
        # Untrained: with initial BN stats almost nothing fires in eval mode and the check would be vacuous.
        model, calibrated_here = calibrate_bn(copy.deepcopy(model), [x]), True
    checks = check(model)
    if calibrate and not calibrated_here and any(c.kind in ("conv", "linear") and not c.exempt and c.rate == 0
                                                 for c in checks):
        model, calibrated_here = calibrate_bn(copy.deepcopy(model), [x]), True
        checks = check(model)
    attn = sorted({type(m).name for m in model.modules() if isinstance(m, Attention)})
    form = f"BN folded, integers as {model.D} binary virtual steps" if expands_spikes(model) else "BN/RepConv folded"
    rep = SpikeDrivenReport(checks, getattr(model, "attn_mode", ",".join(attn) or "?"),
                            getattr(model, "shortcut", "ms"), calibrated_here, inference_form, form)
    if rep.ok and rep.silent:
        warnings.warn(f"verify_spike_driven: {len(rep.silent)} layer(s) received no spike on this input; the "
                      f"verdict covers only the layers that did (see report.silent)", RuntimeWarning, stacklevel=3)
    return rep
