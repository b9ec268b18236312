"""Checks of the engine against the PyTorch model: spike agreement (and where spikes differ, whether the first
difference is a float threshold tie), logits, and SOPs = T x rate x FLOPs."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..inference import fold_bn, has_unfolded_reparam
from ..layers.ops import SpikeMatmul
from ..neuron import neurons
from ..probe import run_observed
from .agreement import Agreement

__all__ = ["expected_sops", "compare_with_model", "Agreement", "model_spikes", "flip_origins"]


def _binary(t: torch.Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


@torch.no_grad()
def expected_sops(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """The energy report's operation counts for ``x``, from hooks on the model's actual conv/linear/matmul inputs.

    Encoding layer (first conv): MACs = FLOPs x B (x T for event input; a static image is identical at every
    step, so it is counted once, as in the paper). A conv that declares a real-valued input (``nonbinary_input``:
    V2's SepConv pwconv2): MACs = T x FLOPs x B. Every other conv/linear: SOPs = T x fr_in x FLOPs x B with
    fr_in = fraction of non-zero entries of its input over all steps and samples, FLOPs = k^2 H_out W_out
    (C_in/groups) C_out (linear: in x out). Products of spike tensors (``SpikeMatmul``: V2's K^T V and Q (K^T V)):
    SOPs = T x fr x FLOPs x B with FLOPs = (output elements per step and sample) x inner size and fr the rate of the
    binary operand (the left one if binary). Totals over the batch, float64. Comparable to ``LayerCount.nominal``.
    A V2 model is counted in its inference form (RepConvs folded), as the energy report and the engine do.
    """
    v3 = callable(getattr(model, "expand_spikes", None))
    if v3:  # V3: the spike-driven form (binary virtual steps), as the energy report counts it; names without .synapse
        model = model.expand_spikes()
    elif has_unfolded_reparam(model):
        model = fold_bn(model)
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
                flops = (math.prod(mod.kernel_size) * (mod.in_channels // mod.groups) * mod.out_channels
                         * math.prod(y.shape[2:]))
                B = inp.shape[0] // T
            if not first["seen"]:
                first["seen"] = True
                out[name] = float(flops) * B * (T if x.ndim == 5 else 1)
                return
            if getattr(mod, "nonbinary_input", ""):
                out[name] = float(T * flops * B)
                return
            rate = float(torch.count_nonzero(inp)) / inp.numel()
            out[name] = T * rate * float(flops) * B
        return fn

    def matmul_hook(name):
        def fn(mod, args, y):
            a, b = args
            B = a.shape[1]
            flops = y.numel() / (T * B) * a.shape[-1]
            s = a if _binary(a) or not _binary(b) else b
            out[name] = T * (float(torch.count_nonzero(s)) / s.numel()) * flops * B
        return fn

    post = [(mod, hook(name)) for name, mod in model.named_modules() if isinstance(mod, (nn.Conv1d, nn.Conv2d,
                                                                                          nn.Linear))]
    post += [(mod, matmul_hook(name)) for name, mod in model.named_modules() if isinstance(mod, SpikeMatmul)]
    run_observed(model, [x], post=post)
    return {k.removesuffix(".synapse"): v for k, v in out.items()} if v3 else out


@torch.no_grad()
def model_spikes(model: nn.Module, x: torch.Tensor, inputs: bool = False):
    """Spikes of every neuron layer that runs (name -> uint8 array, engine layouts, in the order the layers ran) and
    the logits; with ``inputs=True`` also every neuron layer's input X (float32, same layout) as a third result."""
    rec: dict[str, np.ndarray] = {}
    xin: dict[str, np.ndarray] = {}

    def hook(name):
        def fn(m, a, y):
            y = y.detach()
            if name.endswith("talking_heads_lif"):  # [T,B,h,1,d] -> [T,B,D] (c = head*d + lane)
                y = y.reshape(y.shape[0], y.shape[1], -1)
            rec[name] = y.to(torch.uint8).contiguous().numpy()
            if inputs:
                xin[name] = a[0].detach().float().reshape(y.shape).contiguous().numpy()
        return fn

    (logits,) = run_observed(model, [x], post=[(mod, hook(name)) for name, mod in neurons(model)])
    return (rec, logits, xin) if inputs else (rec, logits)


def _membrane(xs: np.ndarray, mod: nn.Module) -> np.ndarray:
    """The charge H[t] of a neuron layer (the model's LIF / PLIF update in float32) from its inputs ``xs[T, ...]``."""
    from .compiler import _neuron

    n = _neuron("", mod)
    v = np.zeros(xs.shape[1:], np.float32)
    hs = np.empty_like(xs)
    for t in range(xs.shape[0]):
        h = v + (xs[t] - v) / n.tau if n.divide else v + (xs[t] - v) * n.k
        hs[t] = h
        v = np.where(h >= n.vth, np.float32(0), h).astype(np.float32)
    return hs


@torch.no_grad()
def flip_origins(model: nn.Module, x: torch.Tensor, engine_spikes: dict, ag: Agreement) -> Agreement:
    """Locate where the flips of ``engine_spikes`` vs the model start (see :class:`Agreement`) and record them in
    ``ag``: per sample, the first neuron layer in execution order with a difference; there, each differing
    neuron's first differing step and the model's margin |H - V_th| at that step."""
    ref, _, xin = model_spikes(model, x, inputs=True)
    mods = dict(neurons(model))
    B = x.shape[0]
    done = np.zeros(B, bool)
    for name, r in ref.items():  # execution order
        s = engine_spikes.get(name)
        if s is None:
            continue
        d = (r != s).reshape(r.shape[0], B, -1)  # [T, B, neurons]
        hit = d.any(axis=(0, 2)) & ~done
        if not hit.any():
            continue
        vth = float(mods[name].v_threshold)
        hs = _membrane(xin[name].reshape(r.shape[0], B, -1), mods[name])
        for b in np.flatnonzero(hit):
            db = d[:, b]  # [T, neurons]
            j = np.flatnonzero(db.any(0))
            t0 = db[:, j].argmax(0)  # first differing step per neuron
            margins = np.abs(hs[t0, b, j].astype(np.float64) - vth)
            ag.origins += len(j)
            ag.origin_layers[name] = ag.origin_layers.get(name, 0) + len(j)
            ag.origin_margins += [float(m) for m in margins]
        done |= hit
        if done.all():
            break
    return ag


@torch.no_grad()
def compare_with_model(model: nn.Module, engine, x: torch.Tensor, origins: bool = True) -> Agreement:
    """Run both on ``x``; count neuron-steps whose spike differs (every neuron layer, every t) and predictions.
    ``origins``: where spikes differ, also locate where the flips start (:func:`flip_origins`; one more model run).
    V3 (E-SpikeFormer): integer activations compared instead of spikes (``validate_v3.compare_v3``)."""
    if getattr(model, "family", None) == "sdt_v3":
        from .validate_v3 import compare_v3

        return compare_v3(model, engine, x, origins)
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
    if origins and ag.mismatched:
        flip_origins(model, x, res.spikes, ag)
    return ag
