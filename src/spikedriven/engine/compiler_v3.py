"""Compile a trained E-SpikeFormer (Spike-driven Transformer V3) into the event-driven executor's plan.

V3's neurons emit integers v in 0..D (``round(clamp(x, 0, D)) / D``); its spike-driven form emits v as D binary
spikes over D virtual steps (the first v fire) and every conv/linear after the first sums its D per-step outputs.
The engine treats the virtual steps as the V1/V2 engine treats time steps, except that the D step outputs of a
layer are summed before the next quantiser (the quantiser decides once per real step, on the sum plus bias). It does
the sum inside the accumulation: an active virtual step of channel c adds the weight row of c, so an input of value
v adds that row v times (the CSR row lists c v times), and the D step outputs are never materialised.

The 1/D of every layer whose input is a norm-D neuron is folded into its weights (``w / D``): D must be a power of
two, so the division is exact and ``sum(w / D) == sum(w) / D`` in float32, bit for bit (the model's VirtualSteps
divides the sum). The head reads the norm-1 neuron: its weights are kept. Layouts are those of ``compiler_v2``:
3x3 convs (stride 1 or 2) in 64-column blocks, 1x1 convs / token linears / the head as ``wt[Cin, Cout]``, depthwise
convs as ``w[k, k, C]``; the attention's q, k, v 1x1 convs share their input and become one linear C -> C + C + 4C.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..inference import fold_bn
from .compiler import Linear, _lin
from .compiler_v2 import ConvK, DWConv, SpikeConv, _convk, _dwconv, _spike_conv

__all__ = ["PlanV3", "DownV3", "SepConvV3", "ConvBlockV3", "AttnBlockV3", "compile_plan_v3"]


@dataclass
class DownV3:
    prefix: str
    spike: str  # neuron name (encode_spike)
    conv: SpikeConv  # encode_conv (BN folded, / D), 3x3 stride 1 or 2


@dataclass
class SepConvV3:
    prefix: str
    pwconv1: Linear  # 1x1 C -> 2C, on spike1
    dwconv: DWConv  # depthwise k x k, on spike2
    pwconv2: Linear  # 1x1 2C -> C, on spike3 (V3 quantises the depthwise output: all three read spikes)


@dataclass
class ConvBlockV3:
    prefix: str
    sep: SepConvV3
    conv1: SpikeConv  # 3x3 C -> 4C on spike1
    conv2: SpikeConv  # 3x3 4C -> C on spike2


@dataclass
class AttnBlockV3:
    prefix: str
    sep: SepConvV3  # the block's conv branch (3x3 depthwise)
    qkv: Linear  # q | k | v 1x1 convs on head_spike: C -> C + C + 4C
    num_heads: int
    dim: int
    scale: float  # the model's 2 / sqrt(d) factor is 2 * scale
    proj: Linear  # 1x1 4C -> C on attn_spike
    fc1: Linear  # token linear (Conv1d k=1) on fc1_spike
    fc2: Linear


@dataclass
class PlanV3:
    D: int
    in_channels: int
    num_classes: int
    total_stride: int
    encode: ConvK  # downsample1_1.encode_conv on the image: dense MACs
    stages: list = field(default_factory=list)
    head: Linear | None = None  # on the norm-1 head neuron (weights not scaled)
    T: int = 1  # one real time step (the executor helpers shared with V2 read it)
    family: str = "sdt_v3"


def _conv(m: nn.Module) -> nn.Module:
    """The conv of a folded ``Sequential(conv, BN)`` (the BN is an Identity after ``fold_bn``)."""
    if isinstance(m, nn.Sequential):
        rest = [c for c in list(m)[1:] if not isinstance(c, nn.Identity)]
        if rest:
            raise NotImplementedError(f"unexpected modules after a conv: {[type(c).__name__ for c in rest]}")
        return m[0]
    return m


def _scaled(obj, D: int):
    """``obj`` with its weights divided by D (exact: D is a power of two)."""
    inv = np.float32(1.0 / D)
    if isinstance(obj, Linear):
        obj.wt = np.ascontiguousarray(obj.wt * inv)
    elif isinstance(obj, SpikeConv):
        obj.wb = np.ascontiguousarray(obj.wb * inv)
    elif isinstance(obj, DWConv):
        obj.w = np.ascontiguousarray(obj.w * inv)
    return obj


def _sep(p: str, s: nn.Module, D: int) -> SepConvV3:
    return SepConvV3(p, _scaled(_lin(f"{p}.pwconv1.0", _conv(s.pwconv1)), D),
                     _scaled(_dwconv(f"{p}.dwconv.0", _conv(s.dwconv)), D),
                     _scaled(_lin(f"{p}.pwconv2.0", _conv(s.pwconv2)), D))


def _down(p: str, d: nn.Module, D: int) -> DownV3:
    return DownV3(p, f"{p}.encode_spike", _scaled(_spike_conv(f"{p}.encode_conv", d.encode_conv), D))


def _conv_block(p: str, blk: nn.Module, D: int) -> ConvBlockV3:
    return ConvBlockV3(p, _sep(f"{p}.Conv", blk.Conv, D), _scaled(_spike_conv(f"{p}.conv1", blk.conv1), D),
                       _scaled(_spike_conv(f"{p}.conv2", blk.conv2), D))


def _attn_block(p: str, blk: nn.Module, D: int) -> AttnBlockV3:
    a, m = blk.attn, blk.mlp
    qkv = _lin(f"{p}.attn.qkv", _conv(a.q_conv), _conv(a.k_conv), _conv(a.v_conv))
    if qkv.wt.shape[1] != 6 * a.dim:
        raise NotImplementedError(f"{p}.attn: the engine expects V3's value width 4C (lamda_ratio 4)")
    return AttnBlockV3(p, _sep(f"{p}.conv", blk.conv, D), _scaled(qkv, D), int(a.num_heads), int(a.dim),
                       float(a.scale), _scaled(_lin(f"{p}.attn.proj_conv.0", _conv(a.proj_conv)), D),
                       _scaled(_lin(f"{p}.mlp.fc1_conv", m.fc1_conv), D),
                       _scaled(_lin(f"{p}.mlp.fc2_conv", m.fc2_conv), D))


@torch.no_grad()
def compile_plan_v3(model: nn.Module) -> PlanV3:
    """Fold BNs (on a copy), check the structure, and extract the weights in the engine's layouts."""
    from ..models.sdt_v3 import IntegerLinearAttention

    if getattr(model, "is_spike_form", False):
        raise ValueError("compile the integer E-SpikeFormer, not its spike-driven form (the engine builds the "
                         "virtual steps itself)")
    D = int(model.D)
    if D & (D - 1):
        raise NotImplementedError(f"the engine runs V3 with D a power of two (official 4), got D={D}: it folds 1/D "
                                  f"into the weights, which is exact only for powers of two")
    for name, m in model.named_modules():
        if hasattr(m, "attention") and hasattr(m, "num_heads") and not isinstance(m, IntegerLinearAttention):
            raise NotImplementedError(f"the V3 engine runs V3's integer linear attention; {name} is "
                                      f"{type(m).__name__}")
    if not getattr(model, "bn_folded", False):
        model = fold_bn(model)  # eval-mode copy
    left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise NotImplementedError(f"BatchNorms left after folding (not directly after a conv): {left[:3]}")
    plan = PlanV3(D=D, in_channels=int(model.in_channels), num_classes=int(model.num_classes),
                  total_stride=int(model.total_stride),
                  encode=_convk("downsample1_1.encode_conv", model.downsample1_1.encode_conv))
    st = plan.stages
    for lst in ("ConvBlock1_1", "downsample1_2", "ConvBlock1_2", "downsample2", "ConvBlock2_1", "ConvBlock2_2",
                "downsample3", "block3", "downsample4", "block4"):
        mod = getattr(model, lst)
        if lst.startswith("downsample"):
            st.append(_down(lst, mod, D))
            continue
        for i, blk in enumerate(mod):
            st.append((_attn_block if lst.startswith("block") else _conv_block)(f"{lst}.{i}", blk, D))
    if isinstance(model.head, nn.Linear):
        plan.head = _lin("head", model.head)
    if not math.isclose(float(model.spike.norm), 1.0):
        raise NotImplementedError("the head neuron must have norm 1 (V3's)")
    return plan
