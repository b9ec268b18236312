"""Measured energy: run a model over data with hooks on every conv/linear input and SDSA primitive, and build
the per-layer report from the firing rates actually seen (or, from shapes only, at a uniform rate).

Energy model (Horowitz 2014, 45 nm, 32-bit float; the constants the paper uses)::

    E = E_MAC * FL_first  +  E_AC * sum_l  sum_t  R_l[t] * FL_l        (+ the SDSA column-sum term)

* ``FL`` of a layer is the dense operation count of *one time step for one sample*: ``k_h k_w (C_in/groups)
  C_out H_out W_out`` for a conv (eq. S1), ``in * out`` per position for a linear layer (eq. S2).
* ``R_l[t]`` is the non-zero fraction of the layer's **actual input** at step t, recorded by a forward hook on
  that very conv/linear module (no hand-kept list of tensor names: the pairing is right by construction).
  ``sum_t R_l[t] = T * mean_t R_l[t]``, so ``SOPs = T x rate x FLOPs`` as in the paper.
* The first (encoding) layer sees the real-valued image: MACs. The paper's formula has no T on this term
  (the image is identical at every step); ``first_layer_T=True`` multiplies it by T instead.
* Event (DVS) input ``[B, T, C, H, W]`` holds non-negative event *counts*, different at every step. By default
  the first layer is then counted as accumulates weighted by the count (an event of count k = k ACs):
  ``E_AC * FL * sum_t mean(x[t])``; ``event_first_layer="mac"`` counts dense MACs at every step instead.
* Integer non-binary inputs (SEW "multi-bit spikes") are counted the same way (value k = k additions);
  real-valued inputs (e.g. the softmax-attention ablation) as dense MACs at every step.
* SDSA: the Hadamard masks (K⊙V, Q⊙mask) are free; the column sum costs one AC per non-zero element of the
  summed tensor, recorded by a hook on the ``TokenSum`` module. BatchNorm is assumed folded into the preceding
  conv (checked on the run: every BN input must be a conv output) and neuron updates are not counted.

All energies are **per sample** (one inference), in mJ (1 mJ = 1e9 pJ).
"""
from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
from torch import nn

from ..inference import deployed_form, expands_spikes, has_unfolded_reparam
from ..layers.attention import Attention
from ..layers.ops import SpikeMask, SpikeMatmul, TokenSum
from ..probe import hooks_attached
from .report import E_AC_PJ, E_MAC_PJ, PJ_PER_MJ, EnergyReport, LayerEnergy, si

__all__ = ["profile_model", "energy_from_config"]


# ==================================================================================================
# Hook-based recording
# ==================================================================================================
class _Acc:
    """Accumulates what one module saw over all calls."""

    def __init__(self, name: str, kind: str, T: int):
        self.name, self.kind = name, kind
        self.flops = None
        self.nz = torch.zeros(T, dtype=torch.float64)  # non-zero count per step
        self.vsum = torch.zeros(T, dtype=torch.float64)  # sum of |values| per step
        self.numel = torch.zeros(T, dtype=torch.float64)
        self.binary = True
        self.integer = True
        self.nonneg = True
        self.first = False
        self.declared = ""  # the module says its input is real-valued, and why (e.g. V2's SepConv pwconv2)
        self.steps = 1  # V3's spike-driven form: the layer runs on D binary virtual steps per real step
        # matmul only: the second operand
        self.b = None


def _per_step(x: torch.Tensor, T: int) -> torch.Tensor | None:
    """View ``x`` as [T, rest...] (inputs come as [T*B, ...] or [T, B, ...]); None if it does not split."""
    if x.ndim >= 1 and x.shape[0] == T:
        return x
    if x.ndim >= 1 and x.shape[0] % T == 0:
        return x.unflatten(0, (T, x.shape[0] // T))
    return None


def _accumulate(acc: _Acc, x: torch.Tensor, T: int) -> None:
    if x.is_meta:
        return
    xt = _per_step(x.detach(), T)
    if xt is None:  # not time-major: spread evenly
        xt = x.detach().reshape(1, -1).expand(T, -1)
    dims = tuple(range(1, xt.ndim))
    acc.nz += torch.count_nonzero(xt, dim=dims).double().cpu() if dims else (xt != 0).double().cpu()
    acc.vsum += xt.abs().double().sum(dim=dims).cpu() if dims else xt.abs().double().cpu()
    acc.numel += xt[0].numel()
    if acc.binary:
        acc.binary = bool(((x == 0) | (x == 1)).all())
    if not acc.binary and acc.integer:
        acc.integer = bool((x == torch.round(x)).all())
    if acc.nonneg:
        acc.nonneg = bool((x >= 0).all())


class _Recorder:
    def __init__(self, model: nn.Module):
        self.model = model
        self.T = int(getattr(model, "T", 1) or 1)
        self.accs: dict[str, _Acc] = {}
        self.samples = 0
        self.batch = 1
        self.event_input = False
        self.first_name: str | None = None
        self.mask_ops = 0.0  # dense mask elements per sample-step (free ops)
        self.last_conv_out: tuple | None = None  # shape of the output of the module that ran last, if a conv
        self.bn_total = 0
        self.bn_after_conv = 0

    def _acc(self, name, kind):
        if name not in self.accs:
            self.accs[name] = _Acc(name, kind, self.T)
        return self.accs[name]

    def hooks(self) -> tuple[list, list]:
        """(pre-hooks, post-hooks) for :func:`spikedriven.probe.hooks_attached`."""
        pre, post = [(self.model, self._model_pre)], []
        for name, mod in self.model.named_modules():
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                post.append((mod, self._syn_hook(name, "linear" if isinstance(mod, nn.Linear) else "conv")))
            elif isinstance(mod, TokenSum):
                pre.append((mod, self._sum_hook(name)))
            elif isinstance(mod, SpikeMask):
                post.append((mod, self._mask_hook))
            elif isinstance(mod, SpikeMatmul):
                post.append((mod, self._matmul_hook(name)))
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                pre.append((mod, self._bn_hook))
            elif not list(mod.children()):
                pre.append((mod, self._other_hook))
        return pre, post

    def run(self, batches, max_batches: int | None = None) -> int:
        """Run the model (eval mode, no autograd) over ``batches`` with the hooks attached; returns batches run."""
        n = 0
        pre, post = self.hooks()
        with torch.no_grad(), hooks_attached(self.model, pre, post):
            for batch in batches:
                self.model(batch[0] if isinstance(batch, (tuple, list)) else batch)
                n += 1
                if max_batches is not None and n >= max_batches:
                    break
        return n

    # -------------------------------------------------------------- hooks
    def _model_pre(self, mod, args):
        x = args[0]
        self.batch = int(x.shape[0])
        self.samples += self.batch
        self.event_input = x.ndim == 5

    def _syn_hook(self, name, kind):
        def hook(mod, args, out):
            x = args[0]
            acc = self._acc(name, kind)
            if self.first_name is None:
                self.first_name = name
                acc.first = True
            acc.declared = getattr(mod, "nonbinary_input", "")
            acc.steps = int(getattr(mod, "virtual_steps", 1))
            fan_in = mod.in_features if kind == "linear" else (
                mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
            acc.flops = out.numel() / (self.T * self.batch * acc.steps) * fan_in
            _accumulate(acc, x, self.T)
            self.last_conv_out = tuple(out.shape) if kind == "conv" else None
        return hook

    def _sum_hook(self, name):
        def hook(mod, args):
            x = args[0]
            acc = self._acc(name, "sdsa")
            acc.flops = x.numel() / (self.T * self.batch)  # one addition per (non-zero) summed element
            _accumulate(acc, x, self.T)
        return hook

    def _mask_hook(self, mod, args, out):
        self.mask_ops += out.numel() / (self.T * self.batch)

    def _matmul_hook(self, name):
        def hook(mod, args, out):
            a, b = args
            acc = self._acc(name, "matmul")
            acc.flops = out.numel() / (self.T * self.batch) * a.shape[-1]
            _accumulate(acc, a, self.T)
            if acc.b is None:
                acc.b = _Acc(name + "[b]", "matmul", self.T)
            _accumulate(acc.b, b, self.T)
        return hook

    def _bn_hook(self, mod, args):
        # foldable: the module that ran just before was a conv with this very output shape (a layout copy between
        # the two, as the NHWC stem makes, changes nothing)
        self.bn_total += 1
        if self.last_conv_out is not None and tuple(args[0].shape) == self.last_conv_out:
            self.bn_after_conv += 1
        self.last_conv_out = None

    def _other_hook(self, mod, args):
        self.last_conv_out = None


def _rates(acc: _Acc) -> list[float]:
    return [float(n / d) if d else 0.0 for n, d in zip(acc.nz, acc.numel)]


def _counts(acc: _Acc) -> list[float]:
    return [float(v / d) if d else 0.0 for v, d in zip(acc.vsum, acc.numel)]


def _build_layers(rec: _Recorder, e_mac: float, e_ac: float, first_layer_T: bool, event_first_layer: str,
                  uniform_rate: float | None = None, sdsa_rate: float | None = None) -> list[LayerEnergy]:
    T = rec.T
    layers = []
    for acc in rec.accs.values():
        if acc.flops is None:
            continue
        fl = float(acc.flops)
        if uniform_rate is not None:  # shapes only: assumed rates
            r = sdsa_rate if acc.kind == "sdsa" else uniform_rate
            rates, counts, kind_in = [r] * T, [r] * T, "assumed"
            binary, integer = True, True
        else:
            rates, counts = _rates(acc), _counts(acc)
            binary, integer = acc.binary, acc.integer
            kind_in = "binary" if binary else ("integer" if integer else "real")
        if acc.steps > 1:  # binary rate per virtual step x D = the mean integer (spikes per neuron per real step)
            rates = [r * acc.steps for r in rates]
            counts = [c * acc.steps for c in counts]
        mean = sum(rates) / T
        note = (f"{acc.steps} virtual steps: rate = mean integer (spikes per neuron), AC = FLOPs x mean integer"
                if acc.steps > 1 else "")
        if acc.first:
            if rec.event_input and uniform_rate is None and integer and acc.nonneg and event_first_layer == "ac":
                op, ops, kind_in = "AC", fl * sum(counts), "events"
                note = "event counts: count k = k accumulates (E_AC x FLOPs x sum_t mean count)"
            elif rec.event_input and uniform_rate is None:
                op, ops, kind_in = "MAC", fl * T, "events"
                note = "event frames counted as dense MACs at every step"
            else:
                op, ops, kind_in = "MAC", fl * (T if first_layer_T else 1), "real"
                rates = [1.0] * T if uniform_rate is not None else rates
                mean = sum(rates) / T
                note = "encoding layer: real-valued image, MACs" + (" x T" if first_layer_T else " (no T factor, as the paper)")
        elif acc.declared and (uniform_rate is not None or not binary):
            op, ops, kind_in, note = "MAC", fl * T, "real", acc.declared
            rates = [1.0] * T if uniform_rate is not None else rates
            mean = sum(rates) / T
        elif acc.kind == "matmul":
            b = acc.b
            if acc.binary or uniform_rate is not None:
                op, ops, note = "AC", fl * sum(rates if acc.binary else [uniform_rate] * T), "left operand binary"
            elif b is not None and b.binary:
                rates = _rates(b)
                mean = sum(rates) / T
                op, ops, note = "AC", fl * sum(rates), "right operand binary (rate shown is its rate)"
            else:
                op, ops, note = "MAC", fl * T, "both operands real: dense MACs"
        elif binary or kind_in == "assumed":
            op, ops = "AC", fl * sum(rates)
            if acc.kind == "sdsa":
                note = "column sum of the masked tensor: one AC per non-zero element"
        elif integer:
            op, ops = "AC", fl * sum(counts)
            note = "multi-bit (integer) spikes: value k = k additions"
        else:
            op, ops = "MAC", fl * T
            note = "real-valued input: dense MACs at every step"
        e = (e_mac if op == "MAC" else e_ac) * ops / PJ_PER_MJ
        layers.append(LayerEnergy(acc.name, acc.kind, op, fl, [float(r) for r in rates], float(mean), float(ops), e,
                                  kind_in, note))
    return layers


_FOLDED_NOTE = ("inference form: each RepConv (+BN) folded into one 3x3 conv reading binary spikes, as deployed "
                "(9*C^2 accumulates per token instead of the training form's C^2 on spikes + (9*C + C^2) MACs)")


_EXPANDED_NOTE = ("spike-driven form (V3): every integer activation v in 0..{D} is {D} binary virtual steps, the "
                  "first v firing; each layer after the first adds its weights once per spike, so its ACs are "
                  "FLOPs x mean integer (the group's rule); spike-by-spike products (Q Kᵀ, (Q Kᵀ) V) are additions")


def _notes(rec: _Recorder, model: nn.Module) -> list[str]:
    notes = []
    if rec.bn_total:
        if rec.bn_after_conv == rec.bn_total:
            notes.append(f"BatchNorm: all {rec.bn_total} BN calls take a conv output directly -> folded into "
                         f"that conv at inference (0 extra ops)")
        else:
            notes.append(f"BatchNorm: only {rec.bn_after_conv}/{rec.bn_total} BN calls directly follow a conv; "
                         f"the others are NOT counted (not foldable)")
    if rec.mask_ops:
        notes.append(f"SDSA Hadamard masks: {si(rec.mask_ops * rec.T)} mask (AND) ops per sample, counted as free")
    for cls in _attention_classes(model):
        if cls.output == "real":
            notes.append(f"the {cls.name} attention's own operations ({cls.operator_ops}) are not hooked here; "
                         f"see `spikedriven energy --theory` for their cost")
    return notes


def _attention_classes(model: nn.Module) -> list[type]:
    """The registered attention classes the model uses (their metadata says how they compute)."""
    return list(dict.fromkeys(type(m) for m in model.modules() if isinstance(m, Attention)))


def _spike_driven_config(model: nn.Module) -> bool:
    return getattr(model, "shortcut", "ms") == "ms" and all(c.spike_driven for c in _attention_classes(model))


@torch.no_grad()
def profile_model(model: nn.Module, batches: Iterable[torch.Tensor], *, e_mac: float = E_MAC_PJ,
                  e_ac: float = E_AC_PJ, first_layer_T: bool = False, event_first_layer: str = "ac",
                  max_batches: int | None = None) -> EnergyReport:
    """Run ``model`` (eval mode) over ``batches`` and return the per-layer firing-rate / FLOPs / energy report.

    Each element of ``batches`` is a model input ([B,C,H,W] static or [B,T,C,H,W] events) or an
    (input, target) pair. Rates are averaged over all elements of all batches.
    """
    if event_first_layer not in ("ac", "mac"):
        raise ValueError(f"event_first_layer must be 'ac' or 'mac', got {event_first_layer!r}")
    notes = []
    # count what is deployed: V3's integers as binary virtual steps, V2's RepConvs folded into one conv of spikes
    if expands_spikes(model):
        notes.append(_EXPANDED_NOTE.format(D=model.D))
    elif has_unfolded_reparam(model):
        notes.append(_FOLDED_NOTE)
    if notes:
        model = deployed_form(model)
    rec = _Recorder(model)
    n = rec.run(batches, max_batches)
    if n == 0:
        raise ValueError("profile_model got no batches")
    layers = _build_layers(rec, e_mac, e_ac, first_layer_T, event_first_layer)
    notes += _notes(rec, model)
    if rec.event_input:
        notes.append("event input: the encoding layer's input is event counts, counted as "
                     + ("ACs weighted by the count" if event_first_layer == "ac" else "dense MACs at every step"))
    return EnergyReport(layers, rec.T, rec.samples, e_mac, e_ac, getattr(model, "model_name", type(model).__name__),
                        first_layer_T, "measured", notes)


@torch.no_grad()
def energy_from_config(name_or_model, uniform_rate: float = 0.14, *, sdsa_rate: float | None = None,
                       e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ, first_layer_T: bool = False,
                       img_size: int | None = None, **overrides) -> EnergyReport:
    """Theoretical energy of a configuration with every AC layer's input at ``uniform_rate``.

    Layer shapes come from a forward pass on the ``meta`` device (no computation, instant), with the same hooks
    as :func:`profile_model`. ``sdsa_rate`` is the non-zero fraction of K⊙V (default ``uniform_rate**2``: K and
    V independent at the uniform rate). Assumes a spike-driven config (MS shortcut), where every conv/linear
    after the first receives binary spikes.
    """
    if not 0.0 <= uniform_rate <= 1.0:
        raise ValueError(f"uniform_rate must be in [0, 1], got {uniform_rate}")
    if isinstance(name_or_model, str):
        from ..models.factory import create_model

        model = create_model(name_or_model, **overrides)
        name = name_or_model
    else:
        if overrides:
            raise TypeError("overrides are only accepted with a model name")
        model = name_or_model
        name = getattr(model, "model_name", type(model).__name__)
    meta = copy.deepcopy(model).to("meta").eval()
    expanded = expands_spikes(meta)
    folded = not expanded and has_unfolded_reparam(meta)
    if expanded or folded:
        meta = deployed_form(meta, inplace=True)
    T = int(getattr(meta, "T", 1))
    size = img_size or getattr(meta, "img_size", 224)
    cin = getattr(meta, "in_channels", 3)
    event = cin == 2
    x = torch.empty((1, T, cin, size, size) if event else (1, cin, size, size), device="meta")

    rec = _Recorder(meta)
    rec.run([x])
    rec.event_input = False  # first layer counted as MAC on the encoded input in this mode
    sr = uniform_rate ** 2 if sdsa_rate is None else sdsa_rate
    layers = _build_layers(rec, e_mac, e_ac, first_layer_T, "mac", uniform_rate=uniform_rate, sdsa_rate=sr)
    notes = [f"uniform-rate estimate: every AC layer's input fires at {uniform_rate}, K⊙V non-zero fraction "
             f"{sr:.4g}; the first layer is counted as MACs" + (" x T" if first_layer_T else " (no T factor)"),
             "BatchNorm assumed folded into the preceding conv (0 extra ops); neuron updates not counted"]
    if folded:
        notes.append(_FOLDED_NOTE)
    if expanded:
        notes.append(_EXPANDED_NOTE.format(D=meta.D) + f"; the uniform rate is per virtual step (mean integer "
                                                         f"{uniform_rate * meta.D:.4g})")
    if not _spike_driven_config(model):
        notes.append("WARNING: this config is not spike-driven; a uniform-rate estimate treats every layer as AC")
    info_mj = None
    try:
        from ..models.registry import model_info

        info_mj = model_info(name).paper_energy_mj if isinstance(name_or_model, str) else None
    except KeyError:
        pass
    if info_mj:
        notes.append(f"paper's reported energy for {name}: {info_mj} mJ")
    return EnergyReport(layers, T, 0, e_mac, e_ac, name, first_layer_T, "uniform-rate", notes)


