"""Compile a trained ``SpikeDrivenTransformer`` (eval mode) into the event-driven executor's plan.

BatchNorm is folded into each conv (``spikedriven.inference.fold_bn``); weights are re-laid out so that one
input spike adds one contiguous row of ``Cout`` floats (see ``kernels``); neuron thresholds and decay are read
from each neuron module. Only the paper's model is supported: attn_mode "sdsa", shortcut "ms" (with or without the DVS Erode).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..inference import fold_bn
from ..layers.attention import Attention, SpikeDrivenSelfAttention
from ..neuron import LIF, ParametricLIF, neurons

__all__ = ["Neuron", "Conv3x3", "Linear", "BlockPlan", "Plan", "compile_plan", "scale_thresholds"]


@dataclass
class Neuron:
    name: str
    vth: np.float32
    k: np.float32  # multiplicative decay (1/tau, or sigmoid(w) for PLIF)
    tau: np.float32
    divide: bool  # True: (X - V) / tau (LIF with tau != 2, bit-identical to the reference)


@dataclass
class Conv3x3:
    name: str
    w: np.ndarray  # [Cin, 3, 3, Cout] float32
    b: np.ndarray  # [Cout]


@dataclass
class Linear:
    name: str
    wt: np.ndarray  # [Cin, Cout] float32 (= W^T)
    b: np.ndarray


@dataclass
class BlockPlan:
    prefix: str
    shortcut_lif: Neuron
    qkv: Linear  # [D, 3D]: q | k | v
    q_lif: Neuron
    k_lif: Neuron
    v_lif: Neuron
    mask_lif: Neuron  # talking_heads_lif (v_th 0.5)
    proj: Linear
    fc1_lif: Neuron
    fc1: Linear
    fc2_lif: Neuron
    fc2: Linear


@dataclass
class Plan:
    T: int
    in_channels: int
    embed_dim: int
    num_classes: int
    pooling_stat: str
    tet: bool
    stem_convs: list  # 4 x Conv3x3 (first is dense)
    stem_lifs: list  # 4 x Neuron (proj_lif .. proj_lif3)
    rpe: Conv3x3
    blocks: list = field(default_factory=list)
    head_lif: Neuron | None = None
    head: Linear | None = None
    dvs_mode: bool = False  # official DVS "Erode" (3x3 max = OR of spikes) on k, v, K&V and the SDSA output
    num_heads: int = 8  # only dvs_mode depends on it: Erode in the head layout mixes lanes of one head


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())


def _neuron(name: str, m: nn.Module) -> Neuron:
    if isinstance(m, ParametricLIF):
        k = torch.sigmoid(m.w.detach().float())
        return Neuron(name, np.float32(m.v_threshold), np.float32(k.item()), np.float32(1.0), False)
    if isinstance(m, LIF):
        tau = float(m.tau)
        if tau == 2.0:  # (X - V) / 2 == (X - V) * 0.5 exactly in binary floating point
            return Neuron(name, np.float32(m.v_threshold), np.float32(0.5), np.float32(2.0), False)
        return Neuron(name, np.float32(m.v_threshold), np.float32(1.0 / tau), np.float32(tau), True)
    raise TypeError(f"{name}: unsupported neuron type {type(m).__name__}")


def _conv3(name: str, conv: nn.Conv2d) -> Conv3x3:
    if tuple(conv.kernel_size) != (3, 3) or tuple(conv.stride) != (1, 1) or tuple(conv.padding) != (1, 1) \
            or conv.groups != 1 or tuple(conv.dilation) != (1, 1):
        raise ValueError(f"{name}: the engine supports 3x3/stride 1/pad 1 convs only")
    w = conv.weight.detach().float().permute(1, 2, 3, 0)  # [Cout,Cin,3,3] -> [Cin,3,3,Cout]
    b = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    return Conv3x3(name, _f32(w.contiguous()), _f32(b))


def _lin(name: str, *mods: nn.Module) -> Linear:
    """One or more 1x1 convs / linears with the same input, concatenated along Cout."""
    ws, bs = [], []
    for m in mods:
        w = m.weight.detach().float()
        if w.ndim in (3, 4):  # 1x1 Conv2d [O, I, 1, 1], or kernel-1 Conv1d [O, I, 1] (V2's token MLP)
            if set(w.shape[2:]) != {1}:
                raise ValueError(f"{name}: expected a 1x1 conv")
            w = w.reshape(w.shape[0], w.shape[1])
        ws.append(w.t())
        bs.append(m.bias.detach().float() if m.bias is not None else torch.zeros(w.shape[0]))
    return Linear(name, _f32(torch.cat(ws, 1).contiguous()), _f32(torch.cat(bs)))


def scale_thresholds(model: nn.Module, scale: float, include_mask: bool = True) -> nn.Module:
    """Copy of ``model`` with every neuron's v_threshold multiplied by ``scale`` (firing-rate sweeps).

    ``include_mask=False`` keeps the SDSA mask neurons (talking_heads_lif, v_th 0.5) unchanged.
    """
    m = copy.deepcopy(model)
    for name, mod in neurons(m):
        if not include_mask and name.endswith(("talking_heads_lif", "attn_lif")):
            continue
        mod.v_threshold = float(mod.v_threshold) * float(scale)
    return m


@torch.no_grad()
def compile_plan(model: nn.Module) -> Plan:
    """Fold BN, check the configuration, and extract weights/neurons in the engine's layouts."""
    if getattr(model, "shortcut", "ms") != "ms":
        raise NotImplementedError(f"the event-driven engine runs spike-driven models only (shortcut='ms'); got "
                                  f"shortcut={model.shortcut!r}")
    for name, m in model.named_modules():
        if isinstance(m, Attention) and not isinstance(m, SpikeDrivenSelfAttention):
            raise NotImplementedError(f"the event-driven engine runs the SDSA attention; {name} is {type(m).__name__} "
                                      f"({m.name}: {m.operator_ops})")
    if not getattr(model, "bn_folded", False):
        model = fold_bn(model)  # eval-mode copy
    pe = model.patch_embed
    sfx = ["", "1", "2", "3"]
    stem_convs = [_conv3(f"patch_embed.proj_conv{s}", getattr(pe, f"proj_conv{s}")) for s in sfx]
    stem_lifs = [_neuron(f"patch_embed.proj_lif{s}", getattr(pe, f"proj_lif{s}")) for s in sfx]
    plan = Plan(T=int(model.T), in_channels=int(model.in_channels), embed_dim=int(model.embed_dim),
                num_classes=int(model.num_classes), pooling_stat=model.pooling_stat, tet=bool(model.tet),
                stem_convs=stem_convs, stem_lifs=stem_lifs, rpe=_conv3("patch_embed.rpe_conv", pe.rpe_conv),
                dvs_mode=bool(getattr(model, "dvs_mode", False)), num_heads=int(model.num_heads))
    for i, blk in enumerate(model.block):
        a, m = blk.attn, blk.mlp
        p = f"block.{i}"
        plan.blocks.append(BlockPlan(
            prefix=p,
            shortcut_lif=_neuron(f"{p}.attn.shortcut_lif", a.shortcut_lif),
            qkv=_lin(f"{p}.attn.qkv_conv", a.q_conv, a.k_conv, a.v_conv),
            q_lif=_neuron(f"{p}.attn.q_lif", a.q_lif), k_lif=_neuron(f"{p}.attn.k_lif", a.k_lif),
            v_lif=_neuron(f"{p}.attn.v_lif", a.v_lif),
            mask_lif=_neuron(f"{p}.attn.talking_heads_lif", a.mask_lif),
            proj=_lin(f"{p}.attn.proj_conv", a.proj_conv),
            fc1_lif=_neuron(f"{p}.mlp.fc1_lif", m.fc1_lif), fc1=_lin(f"{p}.mlp.fc1_conv", m.fc1_conv),
            fc2_lif=_neuron(f"{p}.mlp.fc2_lif", m.fc2_lif), fc2=_lin(f"{p}.mlp.fc2_conv", m.fc2_conv),
        ))
    plan.head_lif = _neuron("head_lif", model.head_lif)
    if isinstance(model.head, nn.Linear):
        plan.head = _lin("head", model.head)
    return plan
