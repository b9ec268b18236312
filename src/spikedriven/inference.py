"""Inference preparation: BatchNorm folded into the preceding conv, no autograd, optional torch.compile.

Folding is exact algebra (eval-mode BN is an affine map per channel), so a folded model computes the same
membrane potentials up to float rounding; the paper's energy model also assumes BN is folded (spec §6).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["fold_bn", "conv_bn_pairs", "prepare_inference"]


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent module, conv attribute, bn attribute) for every conv directly followed by its BN.

    The pairing is by the official naming scheme (``x_conv``/``x_bn``, ``proj_convN``/``proj_bnN``) and checked
    by channel count, so a renamed or reordered layer fails loudly instead of folding the wrong BN.
    """
    pairs = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if not isinstance(child, nn.Conv2d):
                continue
            bn_name = name.replace("_conv", "_bn")
            bn = getattr(parent, bn_name, None)
            if bn_name == name or not isinstance(bn, nn.BatchNorm2d):
                continue
            if bn.num_features != child.out_channels:
                raise ValueError(f"{name} has {child.out_channels} outputs but {bn_name} {bn.num_features} features")
            pairs.append((parent, name, bn_name))
    return pairs


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def fold_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return an eval-mode copy of ``model`` with every conv+BN pair replaced by one conv (BN -> Identity)."""
    if model.training and not inplace:
        model = copy.deepcopy(model).eval()
    elif not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for parent, conv_name, bn_name in conv_bn_pairs(model):
        setattr(parent, conv_name, _fold(getattr(parent, conv_name), getattr(parent, bn_name)))
        setattr(parent, bn_name, nn.Identity())
    model.bn_folded = True
    return model


def prepare_inference(model: nn.Module, fold: bool = True, channels_last: bool | None = None,
                      compile: bool = False, lif_backend: str | None = None) -> nn.Module:
    """Eval-mode copy ready for fast inference (call it under ``torch.inference_mode()``).

    fold: BN folded into convs. channels_last: NHWC activations (default: keep the model's setting).
    compile: wrap in ``torch.compile`` (needs a working compiler toolchain; first call is slow).
    """
    m = fold_bn(model) if fold else copy.deepcopy(model).eval()
    if channels_last is not None and hasattr(m, "channels_last"):
        m.channels_last = channels_last
    if lif_backend is not None and hasattr(m, "set_lif_backend"):
        m.set_lif_backend(lif_backend)
    for p in m.parameters():
        p.requires_grad_(False)
    if compile:
        m = torch.compile(m, dynamic=False)
    return m
