"""Compile a trained Meta-SpikeFormer (Spike-driven Transformer V2) into the event-driven executor's plan.

The model is taken in its inference form (``spikedriven.inference.fold_bn`` on a copy: every RepConv + BN folded into
one 3x3 conv with bias, every conv + BN pair into one conv), then every weight is re-laid out so that one input
spike adds one contiguous row (see ``kernels_v2``):

* encoding conv (7x7, stride s, pad 3, on the image): ``w[Cin, 7, 7, Cout]``, run densely (MACs);
* downsampling convs (3x3, stride 1 or 2, pad 1, on spikes), the conv blocks' conv1/conv2 and the attention's
  q/k/v (fused: ``w[C, 3, 3, 3C]``) and proj convs: ``w[Cin, 3, 3, Cout]``;
* SepConv: pwconv1 (1x1 on spikes) ``wt[C, 2C]``; dwconv (depthwise 7x7 on spikes) ``w[7, 7, 2C]``; pwconv2
  (1x1 on the depthwise conv's real-valued output) ``wt[2C, C]``, run densely (MACs);
* token MLPs (Conv1d k=1) and the heads: ``wt[Cin, Cout]``.

The attention neuron fires on ``0.125 * X >= 0.5`` with X = Q (K^T V) integer: since 0.125 is a power of two, the
plan keeps X and divides the threshold instead (a LIF of threshold 4 on X), which is exact in float32 too (scaling by
a power of two commutes with every rounding of the LIF update).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..inference import fold_bn, has_unfolded_reparam
from .compiler import Linear, Neuron, _conv3, _f32, _lin, _neuron

__all__ = ["ConvK", "SpikeConv", "DWConv", "DownV2", "ConvBlockV2", "AttnBlockV2", "PlanV2", "compile_plan_v2",
           "block_weights"]


@dataclass
class ConvK:
    """A k x k conv with stride and zero padding: ``w[Cin, k, k, Cout]`` (the dense encoding conv)."""
    name: str
    w: np.ndarray
    b: np.ndarray
    stride: int
    pad: int


def block_weights(w: np.ndarray) -> np.ndarray:
    """``w[Cin, k, k, Cout]`` -> ``wb[ceil(Cout/64), Cin, k, k, 64]``: column block jb holds columns
    [64 jb, 64 jb + 64) (the last one zero-padded), so that one block's weights are contiguous."""
    cin, k1, k2, cout = w.shape
    nb = (cout + 63) // 64
    wp = np.zeros((cin, k1, k2, nb * 64), np.float32)
    wp[..., :cout] = w
    return np.ascontiguousarray(wp.reshape(cin, k1, k2, nb, 64).transpose(3, 0, 1, 2, 4))


@dataclass
class SpikeConv:
    """A k x k conv (stride, zero padding) on spikes run by ``sparse_conv2d``, weights in column blocks
    (:func:`block_weights`): the C++ kernel runs tap by tap over tiles of output pixels, so that one tap's block
    (Cin x 64 floats) is reused from L1. (1x1 convs and token linears are
    :class:`~spikedriven.engine.compiler.Linear` layers run by ``sparse_linear`` on ``wt[Cin, Cout]``, whose 64-column
    blocks are read in place with a row stride.)"""
    name: str
    wb: np.ndarray  # [ceil(Cout/64), Cin, k, k, 64]
    b: np.ndarray  # [Cout]
    k: int
    stride: int = 1
    pad: int = 0

    @property
    def cin(self) -> int:
        return int(self.wb.shape[1])

    @property
    def cout(self) -> int:
        return int(self.b.shape[0])


@dataclass
class DWConv:
    """A depthwise k x k conv, stride 1, same-size output: ``w[k, k, C]``."""
    name: str
    w: np.ndarray
    b: np.ndarray
    pad: int


@dataclass
class DownV2:
    prefix: str
    lif: Neuron  # encode_lif
    conv: SpikeConv  # encode_conv (BN folded), 3x3 stride 1 or 2, on spikes


@dataclass
class ConvBlockV2:
    prefix: str
    sep_lif1: Neuron
    pwconv1: Linear  # 1x1 on spikes, C -> 2C
    sep_lif2: Neuron
    dwconv: DWConv  # depthwise 7x7 on spikes
    pwconv2: Linear  # 1x1 on the depthwise output (real-valued): dense MACs
    lif1: Neuron
    conv1: SpikeConv  # 3x3
    lif2: Neuron
    conv2: SpikeConv  # 3x3


@dataclass
class AttnBlockV2:
    prefix: str
    head_lif: Neuron
    qkv: SpikeConv  # q | k | v folded RepConvs, one 3x3 conv C -> 3C
    q_lif: Neuron
    k_lif: Neuron
    v_lif: Neuron
    num_heads: int
    scale: float  # the model's 0.125
    attn_lif: Neuron  # threshold already divided by scale (acts on the integer X = Q (K^T V))
    proj: SpikeConv  # 3x3
    fc1_lif: Neuron
    fc1: Linear  # token linear (Conv1d k=1)
    fc2_lif: Neuron
    fc2: Linear


@dataclass
class PlanV2:
    T: int
    in_channels: int
    num_classes: int
    total_stride: int
    encode: ConvK  # downsample1_1.encode_conv: dense
    stages: list = field(default_factory=list)  # DownV2 | ConvBlockV2 | AttnBlockV2, in forward order
    head_lif: Neuron | None = None
    heads: list = field(default_factory=list)  # Linear: head (and head_kd: the logits are their mean)
    family: str = "sdt_v2"


def _convk(name: str, conv: nn.Conv2d) -> ConvK:
    k = conv.kernel_size
    if len(k) != 2 or k[0] != k[1] or conv.groups != 1 or tuple(conv.dilation) != (1, 1) \
            or conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1] or conv.padding_mode != "zeros":
        raise ValueError(f"{name}: the engine supports square k x k convs with equal strides and zero padding, no "
                         f"groups or dilation")
    w = conv.weight.detach().float().permute(1, 2, 3, 0)  # [Cout,Cin,k,k] -> [Cin,k,k,Cout]
    b = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    return ConvK(name, _f32(w.contiguous()), _f32(b), int(conv.stride[0]), int(conv.padding[0]))


def _spike_conv(name: str, *convs: nn.Module) -> SpikeConv:
    """One or more convs with the same input (concatenated along Cout): k x k Conv2d, or kernel-1 Conv1d."""
    ks = []
    for conv in convs:
        if isinstance(conv, nn.Conv1d):
            if tuple(conv.kernel_size) != (1,) or conv.stride != (1,) or conv.padding != (0,) or conv.groups != 1:
                raise ValueError(f"{name}: the engine supports Conv1d with kernel 1 (a token linear) only")
            w = conv.weight.detach().float()[..., None]  # [O, I, 1] -> [O, I, 1, 1]
            ks.append((w, conv.bias, 1, 1, 0))
        else:
            c = _convk(name, conv)
            ks.append((conv.weight.detach().float(), conv.bias, c.w.shape[1], c.stride, c.pad))
    if len({(k, s, p) for _, _, k, s, p in ks}) != 1:
        raise ValueError(f"{name}: fused convs must have the same kernel, stride and padding")
    _, _, k, s, p = ks[0]
    w = torch.cat([w for w, *_ in ks], 0).permute(1, 2, 3, 0)  # [Cout, Cin, k, k] -> [Cin, k, k, Cout]
    b = torch.cat([bb.detach().float() if bb is not None else torch.zeros(ww.shape[0]) for ww, bb, *_ in ks])
    return SpikeConv(name, block_weights(_f32(w.contiguous())), _f32(b), int(k), int(s), int(p))


def _dwconv(name: str, conv: nn.Conv2d) -> DWConv:
    k = conv.kernel_size
    C = conv.in_channels
    if conv.groups != C or conv.out_channels != C or k[0] != k[1] or tuple(conv.stride) != (1, 1) \
            or tuple(conv.padding) != ((k[0] - 1) // 2,) * 2 or k[0] % 2 == 0 or tuple(conv.dilation) != (1, 1):
        raise ValueError(f"{name}: the engine supports depthwise k x k convs (odd k), stride 1, same padding")
    w = conv.weight.detach().float()[:, 0].permute(1, 2, 0)  # [C,1,k,k] -> [k,k,C]
    b = conv.bias if conv.bias is not None else torch.zeros(C)
    return DWConv(name, _f32(w.contiguous()), _f32(b), int(conv.padding[0]))


def _power_of_two(x: float) -> bool:
    return x > 0 and math.frexp(x)[0] == 0.5


def _down(prefix: str, d: nn.Module) -> DownV2:
    return DownV2(prefix, _neuron(f"{prefix}.encode_lif", d.encode_lif),
                  _spike_conv(f"{prefix}.encode_conv", d.encode_conv))


def _conv_block(p: str, blk: nn.Module) -> ConvBlockV2:
    s = blk.Conv
    return ConvBlockV2(
        prefix=p,
        sep_lif1=_neuron(f"{p}.Conv.lif1", s.lif1), pwconv1=_lin(f"{p}.Conv.pwconv1", s.pwconv1),
        sep_lif2=_neuron(f"{p}.Conv.lif2", s.lif2), dwconv=_dwconv(f"{p}.Conv.dwconv", s.dwconv),
        pwconv2=_lin(f"{p}.Conv.pwconv2", s.pwconv2),
        lif1=_neuron(f"{p}.lif1", blk.lif1), conv1=_spike_conv(f"{p}.conv1", blk.conv1),
        lif2=_neuron(f"{p}.lif2", blk.lif2), conv2=_spike_conv(f"{p}.conv2", blk.conv2),
    )


def _attn_block(p: str, blk: nn.Module) -> AttnBlockV2:
    a, m = blk.attn, blk.mlp
    for n in ("q", "k", "v", "proj"):
        _conv3(f"{p}.attn.{n}_conv", getattr(a, f"{n}_conv"))  # checks: 3x3, stride 1, padding 1
    qkv = _spike_conv(f"{p}.attn.qkv_conv", a.q_conv, a.k_conv, a.v_conv)
    scale = float(a.scale)
    if not _power_of_two(scale):
        raise NotImplementedError(f"{p}.attn: scale {scale} is not a power of two; the engine folds the scale into "
                                  f"the attention neuron's threshold, which is exact only for powers of two")
    n = _neuron(f"{p}.attn.attn_lif", a.attn_lif)
    n.vth = np.float32(float(n.vth) / scale)  # exact: a power of two
    return AttnBlockV2(
        prefix=p, head_lif=_neuron(f"{p}.attn.head_lif", a.head_lif), qkv=qkv,
        q_lif=_neuron(f"{p}.attn.q_lif", a.q_lif), k_lif=_neuron(f"{p}.attn.k_lif", a.k_lif),
        v_lif=_neuron(f"{p}.attn.v_lif", a.v_lif), num_heads=int(a.num_heads), scale=scale, attn_lif=n,
        proj=_spike_conv(f"{p}.attn.proj_conv", a.proj_conv),
        fc1_lif=_neuron(f"{p}.mlp.fc1_lif", m.fc1_lif), fc1=_lin(f"{p}.mlp.fc1_conv", m.fc1_conv),
        fc2_lif=_neuron(f"{p}.mlp.fc2_lif", m.fc2_lif), fc2=_lin(f"{p}.mlp.fc2_conv", m.fc2_conv),
    )


@torch.no_grad()
def compile_plan_v2(model: nn.Module) -> PlanV2:
    """Fold RepConvs and BNs (on a copy), check the structure, and extract weights/neurons in the engine's layouts."""
    from ..layers.attention import Attention
    from ..models.sdt_v2 import SpikeLinearAttention

    for name, m in model.named_modules():
        if isinstance(m, Attention) and not isinstance(m, SpikeLinearAttention):
            raise NotImplementedError(f"the V2 engine runs the spike linear attention; {name} is {type(m).__name__}")
    if not getattr(model, "bn_folded", False) or has_unfolded_reparam(model):  # prepare_inference's form too
        model = fold_bn(model)  # eval-mode copy, RepConvs in their spike-driven (dense 3x3) form
    left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise NotImplementedError(f"BatchNorms left after folding (not directly after a conv): {left[:3]}")
    plan = PlanV2(T=int(model.T), in_channels=int(model.in_channels), num_classes=int(model.num_classes),
                  total_stride=int(model.total_stride),
                  encode=_convk("downsample1_1.encode_conv", model.downsample1_1.encode_conv))
    st = plan.stages
    for i, blk in enumerate(model.ConvBlock1_1):
        st.append(_conv_block(f"ConvBlock1_1.{i}", blk))
    st.append(_down("downsample1_2", model.downsample1_2))
    for i, blk in enumerate(model.ConvBlock1_2):
        st.append(_conv_block(f"ConvBlock1_2.{i}", blk))
    st.append(_down("downsample2", model.downsample2))
    for lst in ("ConvBlock2_1", "ConvBlock2_2"):
        for i, blk in enumerate(getattr(model, lst)):
            st.append(_conv_block(f"{lst}.{i}", blk))
    st.append(_down("downsample3", model.downsample3))
    for i, blk in enumerate(model.block3):
        st.append(_attn_block(f"block3.{i}", blk))
    st.append(_down("downsample4", model.downsample4))
    for i, blk in enumerate(model.block4):
        st.append(_attn_block(f"block4.{i}", blk))
    plan.head_lif = _neuron("lif", model.lif)
    if isinstance(model.head, nn.Linear):
        plan.heads.append(_lin("head", model.head))
        if getattr(model, "kd", False):
            plan.heads.append(_lin("head_kd", model.head_kd))
    return plan
