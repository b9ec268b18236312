"""Firing rates, operation counts and theoretical energy of spiking models (paper §4 / supplement S1-S2).

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
import csv
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import nn

from .layers import SpikeMask, SpikeMatmul, TokenSum

__all__ = [
    "E_MAC_PJ", "E_AC_PJ", "E_MUL_PJ", "LayerEnergy", "EnergyReport", "profile_model", "energy_from_config",
    "conv_flops", "linear_flops", "AttentionCost", "attention_costs", "theoretical_report", "analyze_87x",
    "add_cli",
]

E_MAC_PJ = 4.6  # 32-bit float multiply-accumulate, 45 nm (Horowitz 2014)
E_AC_PJ = 0.9  # 32-bit float add
E_MUL_PJ = 3.7  # 32-bit float multiply (E_MAC = E_MUL + E_AC)
PJ_PER_MJ = 1e9


def conv_flops(conv: nn.Conv2d, out_hw: tuple[int, int]) -> int:
    """Eq. S1: k_h * k_w * (C_in / groups) * C_out * H_out * W_out (one step, one sample)."""
    kh, kw = conv.kernel_size
    return kh * kw * (conv.in_channels // conv.groups) * conv.out_channels * out_hw[0] * out_hw[1]


def linear_flops(lin: nn.Linear, positions: int = 1) -> int:
    """Eq. S2: in * out per position (one step, one sample)."""
    return lin.in_features * lin.out_features * positions


# ==================================================================================================
# Report
# ==================================================================================================
@dataclass
class LayerEnergy:
    name: str
    kind: str  # "conv" | "linear" | "sdsa" | "matmul"
    op: str  # "MAC" | "AC"
    flops: float  # dense operations of one time step for one sample
    rate_per_t: list[float]  # non-zero fraction of the input at each time step
    rate: float  # mean over t
    sops: float  # operations executed per sample, all steps together (ACs for AC layers, MACs for MAC layers)
    energy_mj: float
    input: str = "binary"  # "binary" | "integer" | "real" | "events" | "assumed"
    note: str = ""


@dataclass
class EnergyReport:
    layers: list[LayerEnergy]
    T: int
    n_samples: int = 0
    e_mac: float = E_MAC_PJ
    e_ac: float = E_AC_PJ
    model: str = ""
    first_layer_T: bool = False
    mode: str = "measured"  # "measured" | "uniform-rate"
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ totals
    @property
    def total_mj(self) -> float:
        return sum(l.energy_mj for l in self.layers)

    @property
    def mac_mj(self) -> float:
        return sum(l.energy_mj for l in self.layers if l.op == "MAC")

    @property
    def ac_mj(self) -> float:
        return sum(l.energy_mj for l in self.layers if l.op == "AC")

    @property
    def sdsa_mj(self) -> float:
        return sum(l.energy_mj for l in self.layers if l.kind == "sdsa")

    @property
    def total_flops(self) -> float:
        """Dense operations of one step (the equivalent ANN's FLOPs), all layers."""
        return sum(l.flops for l in self.layers)

    @property
    def total_macs(self) -> float:
        return sum(l.sops for l in self.layers if l.op == "MAC")

    @property
    def total_sops(self) -> float:
        return sum(l.sops for l in self.layers if l.op == "AC")

    @property
    def mean_rate(self) -> float:
        """FLOPs-weighted mean input rate of the AC layers (the single rate that gives the same AC energy)."""
        fl = sum(l.flops for l in self.layers if l.op == "AC")
        return self.total_sops / (self.T * fl) if fl else 0.0

    def layer(self, name: str) -> LayerEnergy:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)

    # ------------------------------------------------------------------ output
    def summary(self) -> dict:
        return {"total_mj": self.total_mj, "mac_mj": self.mac_mj, "ac_mj": self.ac_mj, "sdsa_mj": self.sdsa_mj,
                "flops_per_step": self.total_flops, "macs": self.total_macs, "sops": self.total_sops,
                "mean_ac_input_rate": self.mean_rate}

    def to_dict(self) -> dict:
        return {"model": self.model, "mode": self.mode, "T": self.T, "n_samples": self.n_samples,
                "e_mac_pj": self.e_mac, "e_ac_pj": self.e_ac, "first_layer_T": self.first_layer_T,
                "totals": self.summary(), "notes": list(self.notes), "layers": [asdict(l) for l in self.layers]}

    def to_json(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    def to_csv(self, path) -> None:
        cols = ["name", "kind", "op", "input", "flops"] + [f"rate_t{t}" for t in range(self.T)] + [
            "rate", "sops", "energy_mj", "note"]
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for l in self.layers:
                rates = list(l.rate_per_t) + [""] * (self.T - len(l.rate_per_t))
                w.writerow([l.name, l.kind, l.op, l.input, l.flops, *rates, l.rate, l.sops, l.energy_mj, l.note])
            w.writerow(["TOTAL", "", "", "", self.total_flops, *([""] * self.T), self.mean_rate,
                        self.total_macs + self.total_sops, self.total_mj, ""])

    def table(self) -> str:
        show_t = self.T <= 6
        rate_head = "rate per t" if show_t else "rate min..max"
        rows = [("layer", "kind", "op", "FLOPs/step", rate_head, "mean", "ops", "energy uJ")]
        for l in self.layers:
            if show_t:
                rt = " ".join(f"{r:.3f}" for r in l.rate_per_t)
            else:
                rt = f"{min(l.rate_per_t):.3f}..{max(l.rate_per_t):.3f}" if l.rate_per_t else ""
            rows.append((l.name, l.kind, l.op, _si(l.flops), rt, f"{l.rate:.4f}", _si(l.sops),
                         f"{l.energy_mj * 1e3:.2f}"))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        right = {3, 5, 6, 7}
        lines = []
        for j, r in enumerate(rows):
            lines.append("  ".join(v.rjust(w) if c in right else v.ljust(w) for c, (v, w) in enumerate(zip(r, widths))))
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
        head = (f"energy report ({self.mode}) for {self.model or 'model'}: T={self.T}"
                + (f", {self.n_samples} samples" if self.n_samples else "")
                + f", E_MAC={self.e_mac} pJ, E_AC={self.e_ac} pJ, per sample")
        tail = [
            f"total FLOPs/step {_si(self.total_flops)}, MACs {_si(self.total_macs)}, SOPs (ACs) {_si(self.total_sops)}, "
            f"FLOPs-weighted mean AC input rate {self.mean_rate:.4f}",
            f"energy: MAC {self.mac_mj:.4f} mJ + AC {self.ac_mj:.4f} mJ (of which SDSA column sums "
            f"{self.sdsa_mj * 1e3:.3f} uJ) = TOTAL {self.total_mj:.4f} mJ",
        ]
        return "\n".join([head, *lines, *tail, *(f"note: {n}" for n in self.notes)])

    __str__ = table


def _si(x: float) -> str:
    for unit, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= unit:
            return f"{x / unit:.3f}{s}"
    return f"{x:.0f}"


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
        self.conv_out_ptrs: set[tuple[int, int]] = set()
        self.bn_total = 0
        self.bn_after_conv = 0
        self.handles = []

    def _acc(self, name, kind):
        if name not in self.accs:
            self.accs[name] = _Acc(name, kind, self.T)
        return self.accs[name]

    def attach(self):
        m = self.model
        self.handles.append(m.register_forward_pre_hook(self._model_pre))
        for name, mod in m.named_modules():
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                kind = "linear" if isinstance(mod, nn.Linear) else "conv"
                self.handles.append(mod.register_forward_hook(self._syn_hook(name, kind)))
            elif isinstance(mod, TokenSum):
                self.handles.append(mod.register_forward_pre_hook(self._sum_hook(name)))
            elif isinstance(mod, SpikeMask):
                self.handles.append(mod.register_forward_hook(self._mask_hook))
            elif isinstance(mod, SpikeMatmul):
                self.handles.append(mod.register_forward_hook(self._matmul_hook(name)))
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
                self.handles.append(mod.register_forward_pre_hook(self._bn_hook))
        return self

    def detach(self):
        for h in self.handles:
            h.remove()
        self.handles.clear()

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
            fan_in = mod.in_features if kind == "linear" else (
                mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
            acc.flops = out.numel() / (self.T * self.batch) * fan_in
            _accumulate(acc, x, self.T)
            if kind == "conv" and not out.is_meta:
                self.conv_out_ptrs.add((out.data_ptr(), out.numel()))
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
        x = args[0]
        self.bn_total += 1
        if not x.is_meta and (x.data_ptr(), x.numel()) in self.conv_out_ptrs:
            self.bn_after_conv += 1


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
        mean = sum(rates) / T
        note = ""
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


def _notes(rec: _Recorder, model: nn.Module) -> list[str]:
    notes = []
    if rec.bn_total:
        if rec.bn_after_conv == rec.bn_total:
            notes.append(f"BatchNorm: all {rec.bn_total} BN calls take a conv output directly -> folded into "
                         f"that conv at inference (0 extra ops)")
        elif rec.conv_out_ptrs:
            notes.append(f"BatchNorm: only {rec.bn_after_conv}/{rec.bn_total} BN calls directly follow a conv; "
                         f"the others are NOT counted (not foldable)")
    if rec.mask_ops:
        notes.append(f"SDSA Hadamard masks: {_si(rec.mask_ops * rec.T)} mask (AND) ops per sample, counted as free")
    if getattr(model, "attn_mode", "sdsa") == "softmax":
        notes.append("softmax/scale of the softmax-attention ablation are not hooked here; "
                     "see `spikedriven energy --theory` for their cost")
    return notes


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
    rec = _Recorder(model).attach()
    was_training = model.training
    model.eval()
    n = 0
    try:
        for batch in batches:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            model(batch)
            n += 1
            if max_batches is not None and n >= max_batches:
                break
    finally:
        rec.detach()
        model.train(was_training)
    if n == 0:
        raise ValueError("profile_model got no batches")
    layers = _build_layers(rec, e_mac, e_ac, first_layer_T, event_first_layer)
    notes = _notes(rec, model)
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
        from .model import create_model

        model = create_model(name_or_model, **overrides)
        name = name_or_model
    else:
        if overrides:
            raise TypeError("overrides are only accepted with a model name")
        model = name_or_model
        name = getattr(model, "model_name", type(model).__name__)
    meta = copy.deepcopy(model).to("meta").eval()
    T = int(getattr(meta, "T", 1))
    size = img_size or getattr(meta, "img_size", 224)
    cin = getattr(meta, "in_channels", 3)
    event = cin == 2
    x = torch.empty((1, T, cin, size, size) if event else (1, cin, size, size), device="meta")

    rec = _Recorder(meta).attach()
    try:
        meta(x)
    finally:
        rec.detach()
    rec.event_input = False  # first layer counted as MAC on the encoded input in this mode
    sr = uniform_rate ** 2 if sdsa_rate is None else sdsa_rate
    layers = _build_layers(rec, e_mac, e_ac, first_layer_T, "mac", uniform_rate=uniform_rate, sdsa_rate=sr)
    notes = [f"uniform-rate estimate: every AC layer's input fires at {uniform_rate}, K⊙V non-zero fraction "
             f"{sr:.4g}; the first layer is counted as MACs" + (" x T" if first_layer_T else " (no T factor)"),
             "BatchNorm assumed folded into the preceding conv (0 extra ops); neuron updates not counted"]
    if getattr(model, "shortcut", "ms") != "ms" or getattr(model, "attn_mode", "sdsa") not in ("sdsa", "sdsa_v1"):
        notes.append("WARNING: this config is not spike-driven; a uniform-rate estimate treats every layer as AC")
    info_mj = None
    try:
        from .model import model_info

        info_mj = model_info(name).paper_energy_mj if isinstance(name_or_model, str) else None
    except KeyError:
        pass
    if info_mj:
        notes.append(f"paper's reported energy for {name}: {info_mj} mJ")
    return EnergyReport(layers, T, 0, e_mac, e_ac, name, first_layer_T, "uniform-rate", notes)


# ==================================================================================================
# Theory: VSA vs SSA vs SDSA (RQ2)
# ==================================================================================================
@dataclass
class AttentionCost:
    name: str
    terms: list[tuple[str, float, str, float]]  # (term, count per sample, op "MAC"|"AC"|"MUL"|"MASK", energy pJ)

    @property
    def energy_pj(self) -> float:
        return sum(t[3] for t in self.terms)

    @property
    def energy_mj(self) -> float:
        return self.energy_pj / PJ_PER_MJ

    def count(self, op: str) -> float:
        return sum(t[1] for t in self.terms if t[2] == op)


def attention_costs(N: int, D: int, T: int = 4, rate_q: float = 0.14, rate_k: float = 0.14, rate_v: float = 0.14,
                    rate_kv: float | None = None, *, rate_in: float = 0.14, rate_out: float = 0.14, heads: int = 1,
                    include_projections: bool = False, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ,
                    e_mul: float | None = None, e_mask: float = 0.0) -> dict[str, AttentionCost]:
    """Operation counts and energy (per sample) of one self-attention of N tokens x D channels.

    VSA (ANN, one pass):  QKᵀ N²D MAC, scale heads·N² MUL, softmax 2·heads·N² MAC-equivalents, AV N²D MAC.
    SSA (Spikformer, T steps): QKᵀ on spikes T·R_q·N²D AC, (QKᵀ)V T·R_v·N²D AC, scale T·N·D MUL.
    SDSA (T steps): K⊙V and Q⊙mask masks (T·N·D each, ``e_mask`` pJ, 0 by default), column sum T·R_kv·N·D AC.
    ``rate_kv`` (non-zero fraction of K⊙V, the paper's R̂) defaults to rate_k·rate_v.
    ``include_projections`` adds Q/K/V (3ND²) and output (ND²) projections: MACs for VSA, T·R·FLOPs ACs for the
    spiking ones (input rate ``rate_in`` for Q/K/V, ``rate_out`` for the output projection).
    ``heads=1`` follows the paper's N² terms; the model's 8 heads multiply the scale/softmax terms by 8.
    """
    e_mul = e_mac - e_ac if e_mul is None else e_mul
    rkv = rate_k * rate_v if rate_kv is None else rate_kv
    ND, N2D, N2 = N * D, N * N * D, N * N
    vsa = [("QK^T", N2D, "MAC", e_mac * N2D), ("scale", heads * N2, "MUL", e_mul * heads * N2),
           ("softmax", 2 * heads * N2, "MAC", e_mac * 2 * heads * N2), ("AV", N2D, "MAC", e_mac * N2D)]
    ssa = [("QK^T", T * rate_q * N2D, "AC", e_ac * T * rate_q * N2D),
           ("(QK^T)V", T * rate_v * N2D, "AC", e_ac * T * rate_v * N2D),
           ("scale", T * ND, "MUL", e_mul * T * ND)]
    sdsa = [("K*V mask", T * ND, "MASK", e_mask * T * ND), ("column sum", T * rkv * ND, "AC", e_ac * T * rkv * ND),
            ("Q*mask", T * ND, "MASK", e_mask * T * ND)]
    if include_projections:
        p_in, p_out = 3 * N * D * D, N * D * D
        vsa = [("QKV proj", p_in, "MAC", e_mac * p_in)] + vsa + [("out proj", p_out, "MAC", e_mac * p_out)]
        for lst in (ssa, sdsa):
            lst.insert(0, ("QKV proj", T * rate_in * p_in, "AC", e_ac * T * rate_in * p_in))
            lst.append(("out proj", T * rate_out * p_out, "AC", e_ac * T * rate_out * p_out))
    return {"VSA": AttentionCost("VSA", vsa), "SSA": AttentionCost("SSA", ssa), "SDSA": AttentionCost("SDSA", sdsa)}


def theoretical_report(N: int, D: int, T: int = 4, *, rate: float = 0.14, rate_kv: float | None = None,
                       heads: int = 1, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ, blocks: int = 1) -> str:
    """Text table: VSA / SSA / SDSA counts and energy for the attention operator and the whole attention module."""
    lines = [f"self-attention cost per sample: N={N} tokens, D={D} channels, T={T}, uniform rate R={rate}, "
             f"R_kv={rate * rate if rate_kv is None else rate_kv:.4g}, heads={heads}, blocks={blocks}, "
             f"E_MAC={e_mac} pJ, E_AC={e_ac} pJ (masks free)"]
    for proj in (False, True):
        c = attention_costs(N, D, T, rate, rate, rate, rate_kv, rate_in=rate, rate_out=rate, heads=heads,
                            include_projections=proj, e_mac=e_mac, e_ac=e_ac)
        lines.append("")
        lines.append("attention module incl. Q/K/V + output projections:" if proj else
                     "attention operator f(Q,K,V) only:")
        lines.append(f"  {'':5s} {'MAC':>12s} {'AC':>12s} {'MUL':>12s} {'mask':>12s} {'energy':>14s} {'vs SDSA':>10s}")
        ref = c["SDSA"].energy_pj
        for k, v in c.items():
            e = v.energy_pj * blocks
            lines.append(f"  {k:5s} {_si(v.count('MAC') * blocks):>12s} {_si(v.count('AC') * blocks):>12s} "
                         f"{_si(v.count('MUL') * blocks):>12s} {_si(v.count('MASK') * blocks):>12s} "
                         f"{e / 1e6:11.4f} uJ {v.energy_pj / ref if ref else float('inf'):9.1f}x")
    return "\n".join(lines)


def analyze_87x(N: int = 196, D: int = 512, T: int = 4, rate: float = 0.14, rate_kv: float = 0.02,
                target: float = 87.2, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ) -> list[dict]:
    """Which counting assumption turns VSA/SDSA into ``target`` (the paper's "up to 87.2x")?

    For each hypothesis: the ratio at the given rates, and the value of the one free rate that would give
    exactly ``target`` (the SDSA energy is linear in it, so it is solved in closed form).
    """
    ND, N2D, N2, P = N * D, N * N * D, N * N, 4 * N * D * D
    out = []

    def add(label, vsa_pj, sdsa_fixed_pj, sdsa_per_rate_pj, free, value):
        ratio = vsa_pj / (sdsa_fixed_pj + sdsa_per_rate_pj * value)
        needed = (vsa_pj / target - sdsa_fixed_pj) / sdsa_per_rate_pj
        out.append({"hypothesis": label, "vsa_pj": vsa_pj, "sdsa_pj": sdsa_fixed_pj + sdsa_per_rate_pj * value,
                    "ratio": ratio, "free_parameter": free, "value_used": value, "value_for_target": needed})

    vsa_op = e_mac * 2 * N2D
    vsa_sm = vsa_op + (e_mac - e_ac) * N2 + e_mac * 2 * N2
    add("operator only: E_MAC*2N^2D vs E_AC*T*R_kv*N*D (paper Table 1 f(Q,K,V))", vsa_op, 0, e_ac * T * ND,
        "R_kv", rate_kv)
    add("operator + scale + softmax vs E_AC*T*R_kv*N*D", vsa_sm, 0, e_ac * T * ND, "R_kv", rate_kv)
    add("module (Q/K/V/out projections + operator), projections at rate R", vsa_sm + e_mac * P,
        e_ac * T * rate_kv * ND, e_ac * T * P, "R (projection input rate)", rate)
    add("block (module + MLP 8ND^2), all inputs at rate R", vsa_sm + e_mac * (P + 2 * P),
        e_ac * T * rate_kv * ND, e_ac * T * 3 * P, "R (all layer inputs)", rate)
    add("per-operation: same op count on both sides, E_MAC vs E_AC*T*R_kv", e_mac, 0, e_ac * T, "R_kv", rate_kv)
    add("operator, SDSA counted over N^2D like a matmul: E_MAC*2N^2D vs E_AC*T*R*2N^2D (= SSA-style)", vsa_op, 0,
        e_ac * T * 2 * N2D, "R", rate)
    return out


# ==================================================================================================
# Data glue for the CLI
# ==================================================================================================
def _random_batches(model, n_batches: int, batch_size: int, img_size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    cin, T = model.in_channels, model.T
    for _ in range(n_batches):
        if cin == 2:
            yield torch.poisson(torch.full((batch_size, T, cin, img_size, img_size), 0.3), generator=g)
        else:
            yield (torch.rand(batch_size, cin, img_size, img_size, generator=g) - 0.5) / 0.5


def _to_model_input(x: torch.Tensor, model, img_size: int, mean=0.5, std=0.5) -> torch.Tensor:
    """[B,C,H,W] float in [0,1] -> model channels and size, normalised with the dataset's mean/std (the
    training recipe's eval transform; 0.5/0.5 where the dataset defines none)."""
    import torch.nn.functional as F

    if x.ndim == 3:
        x = x.unsqueeze(1)
    cin = model.in_channels
    if x.shape[1] != cin:
        x = x.mean(1, keepdim=True).expand(-1, cin, -1, -1) if cin != 1 else x.mean(1, keepdim=True)
    if x.shape[-2:] != (img_size, img_size):
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    m = torch.as_tensor(mean, dtype=x.dtype).reshape(-1, 1, 1)
    sd = torch.as_tensor(std, dtype=x.dtype).reshape(-1, 1, 1)
    return ((x - m) / sd).contiguous()


def _digits_batches(model, n_batches: int, batch_size: int, img_size: int):
    from sklearn.datasets import load_digits

    if model.in_channels == 2:
        raise ValueError("--data digits gives static images; this model expects event frames (use --data random)")
    d = load_digits()
    imgs = torch.tensor(d.images, dtype=torch.float32) / 16.0
    from .data import dataset_normalisation

    mean, std = dataset_normalisation("digits")
    for i in range(n_batches):
        chunk = imgs[i * batch_size:(i + 1) * batch_size]
        if len(chunk) == 0:
            return
        yield _to_model_input(chunk, model, img_size, mean, std)


def _dataset_batches(model, name: str, root: str, n_batches: int, batch_size: int, img_size: int):
    """Glue to ``spikedriven.data.create_dataset`` (static: PIL/uint8 images; events: [T,C,H,W] frames)."""
    import numpy as np

    try:
        from .data import create_dataset, dataset_normalisation
    except ImportError as e:
        raise ValueError(f"--data {name} needs spikedriven.data, which is not available here ({e}); "
                         f"use --data random or --data digits") from None
    ds = create_dataset(name, root, split="test", T=model.T)
    mean, std = dataset_normalisation(name)
    items = []
    for i in range(min(len(ds), n_batches * batch_size)):
        x = ds[i][0] if isinstance(ds[i], (tuple, list)) else ds[i]
        if not isinstance(x, torch.Tensor):
            arr = np.asarray(x)
            x = torch.from_numpy(arr.copy())
            if x.ndim == 3 and x.shape[-1] in (1, 3):  # HWC
                x = x.permute(2, 0, 1)
        x = x.float()
        if x.ndim == 4:  # event frames [T, C, H, W]: keep counts, resize only
            if x.shape[-1] != img_size:
                x = torch.nn.functional.interpolate(x, size=(img_size, img_size), mode="nearest")
            items.append(x)
        else:
            if x.max() > 1.0:
                x = x / 255.0
            items.append(_to_model_input(x.unsqueeze(0), model, img_size, mean, std)[0])
        if len(items) == batch_size:
            yield torch.stack(items)
            items = []
    if items:
        yield torch.stack(items)


def _batches_from_args(args, model, img_size):
    if args.data == "random":
        return _random_batches(model, args.batches, args.batch_size, img_size, args.seed)
    if args.data == "digits":
        return _digits_batches(model, args.batches, args.batch_size, img_size)
    # no --data-root: the dataset's default location (e.g. the Debian package's Fashion-MNIST); a missing dataset
    # raises spikedriven.data's error with the expected layout
    return _dataset_batches(model, args.data, args.data_root, args.batches, args.batch_size, img_size)


# ==================================================================================================
# CLI
# ==================================================================================================
def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "energy", help="firing rates, FLOPs/SOPs and energy per layer; --theory: VSA vs SSA vs SDSA",
        description="Measured mode (default): run the model over data and report per-layer input firing rates, "
                    "FLOPs, SOPs, MAC/AC and energy. --uniform-rate R: the same report from shapes only, every "
                    "AC layer at rate R. --theory: operation counts and energy of VSA, SSA and SDSA.")
    p.add_argument("--model", help="registered model name (default: the checkpoint's model, else sdt_cifar10_2_256)")
    p.add_argument("--config", help="YAML config instead of --model")
    p.add_argument("--checkpoint", help="weights to load")
    p.add_argument("--ema", action="store_true", help="load the EMA weights of the checkpoint")
    p.add_argument("--T", type=int, help="override the number of time steps")
    p.add_argument("--img-size", type=int, help="input size (default: the model's)")
    p.add_argument("--data", default="random", help="random | digits | a dataset name for spikedriven.data")
    p.add_argument("--data-root", help="dataset root for --data NAME")
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-calibrate", action="store_true",
                   help="do not calibrate BatchNorm statistics of an untrained model on the data")
    p.add_argument("--uniform-rate", type=float, help="no data: every AC layer's input at this rate")
    p.add_argument("--sdsa-rate", type=float, help="K*V non-zero fraction for --uniform-rate (default rate^2)")
    p.add_argument("--theory", action="store_true", help="VSA vs SSA vs SDSA comparison and the 87.2x analysis")
    p.add_argument("--N", type=int, help="tokens for --theory (default: the model's)")
    p.add_argument("--D", type=int, help="channels for --theory (default: the model's)")
    p.add_argument("--rate", type=float, default=0.14, help="uniform rate for --theory")
    p.add_argument("--rate-kv", type=float, help="K*V non-zero fraction for --theory (default rate^2)")
    p.add_argument("--e-mac", type=float, default=E_MAC_PJ, help="pJ per MAC (default 4.6)")
    p.add_argument("--e-ac", type=float, default=E_AC_PJ, help="pJ per AC (default 0.9)")
    p.add_argument("--first-layer-T", action="store_true", help="multiply the encoding layer's MACs by T")
    p.add_argument("--event-first-layer", choices=["ac", "mac"], default="ac",
                   help="DVS input: count the encoding layer as ACs weighted by event count (default) or MACs")
    p.add_argument("--csv", help="write the per-layer report as CSV")
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--plot", help="write a firing-rate bar chart (PNG)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    overrides = {"T": args.T} if args.T else {}
    if args.theory:
        if args.N and args.D:
            N, D, T, L = args.N, args.D, args.T or 4, 1
        else:
            m = _build(args, overrides)
            N = args.N or ((args.img_size or m.img_size) // m.downsample) ** 2
            D, T, L = args.D or m.embed_dim, m.T, m.depth
        print(theoretical_report(N, D, T, rate=args.rate, rate_kv=args.rate_kv, e_mac=args.e_mac, e_ac=args.e_ac))
        print(f"\n(x {L} blocks for the whole network)" if L > 1 else "")
        print(f"\nthe paper's 'up to 87.2x': which assumption gives it? (N={N}, D={D}, T={T})")
        for h in analyze_87x(N, D, T, rate=args.rate, rate_kv=args.rate_kv or 0.02, e_mac=args.e_mac, e_ac=args.e_ac):
            print(f"  {h['ratio']:12.1f}x  {h['hypothesis']}\n{'':17s}at {h['free_parameter']} = {h['value_used']:.4g}; "
                  f"87.2x needs {h['free_parameter']} = {h['value_for_target']:.4g}")
        return 0
    if args.uniform_rate is not None:
        if args.config or not args.model:  # a YAML, a checkpoint that names its model, or the default
            rep = energy_from_config(_build(args, overrides), args.uniform_rate, sdsa_rate=args.sdsa_rate,
                                     e_mac=args.e_mac, e_ac=args.e_ac, first_layer_T=args.first_layer_T,
                                     img_size=args.img_size)
        else:
            rep = energy_from_config(args.model, args.uniform_rate, sdsa_rate=args.sdsa_rate, e_mac=args.e_mac,
                                     e_ac=args.e_ac, first_layer_T=args.first_layer_T, img_size=args.img_size,
                                     **overrides)
    else:
        model = _build(args, overrides)
        size = args.img_size or model.img_size
        from .model import bn_is_calibrated, calibrate_bn

        if not args.no_calibrate and not bn_is_calibrated(model):
            calib = list(_batches_from_args(args, model, size))
            calibrate_bn(model, calib)
            print("untrained model: BatchNorm statistics calibrated on the data so that neurons fire")
            batches = calib
        else:
            batches = _batches_from_args(args, model, size)
        rep = profile_model(model, batches, e_mac=args.e_mac, e_ac=args.e_ac, first_layer_T=args.first_layer_T,
                            event_first_layer=args.event_first_layer)
        rep.notes.append(f"data: {args.data}, {rep.n_samples} samples at {size}x{size}")
    print(rep.table())
    if args.csv:
        rep.to_csv(args.csv)
        print(f"wrote {args.csv}")
    if args.json:
        rep.to_json(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        from .viz import plot_firing_rates

        plot_firing_rates(rep, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _build(args, overrides):
    from .cli import build_model_from_args

    return build_model_from_args(args, **overrides)
