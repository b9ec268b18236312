"""The inference form of a model: BatchNorms folded into their convs, re-parameterisable convs (V2's RepConv)
folded, no autograd, optional torch.compile.

Folding is exact algebra (eval-mode BN is an affine map per channel; a RepConv in eval mode is one linear map of
its input), so a folded model computes the same membrane potentials up to float rounding; the paper's energy
model also assumes BN is folded.

Two forms of a RepConv: ``fold_bn`` (the spike-driven form, which the verifier, the energy report and the event
engines look at) makes each one dense 3x3 conv reading binary spikes; ``prepare_inference`` (the dense evaluation
path) by default keeps both that conv and the cheaper 1x1 -> depthwise 3x3 -> 1x1 chain and runs, per input size,
the one with fewer multiply-accumulates (``layers.repconv.RepConvEval``), so folding never makes evaluation
slower than the unfolded model.
"""
from __future__ import annotations

import copy
import re

import torch
from torch import nn

__all__ = ["fold_bn", "fold_reparam", "conv_bn_pairs", "prepare_inference", "has_unfolded_reparam", "deployed_form",
           "expands_spikes", "REPCONV_FORMS"]

_BN = nn.modules.batchnorm._BatchNorm
_CONV = (nn.Conv1d, nn.Conv2d)


def _bn_name(conv_name: str) -> str | None:
    """The BatchNorm that follows a conv, by the official naming schemes: ``q_conv``/``q_bn``,
    ``proj_conv1``/``proj_bn1``, ``fc1_conv``/``fc1_bn``, ``encode_conv``/``encode_bn`` (``x_conv`` -> ``x_bn``),
    and V2's ``conv1``/``bn1``, ``pwconv2``/``bn2``."""
    if "_conv" in conv_name:
        return conv_name.replace("_conv", "_bn")
    m = re.fullmatch(r"(?:pw)?conv(\d+)", conv_name)
    return f"bn{m.group(1)}" if m else None


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent module, conv attribute, bn attribute) for every conv directly followed by its BN (by name, or as
    the next module of a Sequential).

    The pairing is by the official naming schemes and checked by channel count, so a renamed or reordered layer
    fails loudly instead of folding the wrong BN.
    """
    pairs = []
    for parent in model.modules():
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if not isinstance(child, _CONV):
                continue
            if isinstance(parent, nn.Sequential):  # Sequential(conv, BN), as V3's pwconv1 / q_conv
                nxt = children[i + 1] if i + 1 < len(children) else None
                bn_name = nxt[0] if nxt is not None and isinstance(nxt[1], _BN) else None
            else:
                bn_name = _bn_name(name)
            bn = getattr(parent, bn_name, None) if bn_name else None
            if not isinstance(bn, _BN):
                continue
            if bn.num_features != child.out_channels:
                raise ValueError(f"{name} has {child.out_channels} outputs but {bn_name} {bn.num_features} features")
            pairs.append((parent, name, bn_name))
    return pairs


@torch.no_grad()
def _fold(conv: nn.Module, bn: _BN) -> nn.Module:
    """A copy of ``conv`` (same class: it keeps what it accepts and how it saves inputs) with ``bn`` folded in."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    fused = copy.deepcopy(conv)
    w = conv.weight.double()
    fused.weight.copy_(w * scale.view(-1, *([1] * (w.ndim - 1))))
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    b = (bias - bn.running_mean.double()) * scale + bn.bias.double()
    fused.bias = nn.Parameter(b.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    return fused


REPCONV_FORMS = ("dense", "auto", "chain")


def _folded(rep: nn.Module, bn: _BN | None, form: str) -> nn.Module:
    make = getattr(rep, "eval_form", None)
    if form == "dense" or make is None:  # a reparam module without a chain form folds densely
        return rep.fused_conv(bn) if bn is not None else rep.fused_conv()
    return make(bn, mode=form)


def fold_reparam(model: nn.Module, form: str = "dense") -> nn.Module:
    """In place: every re-parameterisable conv (a module with ``fused_conv(bn_after=None)``, e.g. V2's RepConv),
    with the BatchNorm that follows it inside a Sequential, is folded. The model must be in eval mode.

    form: "dense" (one 3x3 conv on binary spikes: the spike-driven form; a dense evaluation module is turned back
    into it), "auto" (a ``RepConvEval`` running, per input size, the form with fewer MACs) or "chain" (always the
    1x1 -> depthwise 3x3 -> 1x1 chain)."""
    if form not in REPCONV_FORMS:
        raise ValueError(f"form must be one of {', '.join(REPCONV_FORMS)}, got {form!r}")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Sequential) and len(child) == 2 and hasattr(child[0], "fused_conv") \
                    and isinstance(child[1], _BN):
                setattr(parent, name, _folded(child[0], child[1], form))
            elif hasattr(child, "fused_conv"):
                setattr(parent, name, _folded(child, None, form))
            elif hasattr(child, "dense_form"):
                if form == "dense":
                    setattr(parent, name, child.dense_form())
                else:
                    child.mode = form
    model.repconv_folded = True
    return model


def has_unfolded_reparam(model: nn.Module) -> bool:
    """True if ``model`` holds re-parameterisable convs that are not in their spike-driven form: its training form,
    or the dense evaluation form of ``prepare_inference`` (``fold_bn`` gives the spike-driven one)."""
    return any(hasattr(m, "fused_conv") or hasattr(m, "dense_form") for m in model.modules())


def fold_bn(model: nn.Module, inplace: bool = False, repconv: str = "dense") -> nn.Module:
    """Eval-mode model (a copy unless ``inplace``) in inference form: re-parameterisable convs folded (``repconv``:
    see :func:`fold_reparam`; the default "dense" is the spike-driven form), then every conv + BN pair replaced by
    one conv (BN -> Identity)."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    fold_reparam(model, repconv)
    for parent, conv_name, bn_name in conv_bn_pairs(model):
        setattr(parent, conv_name, _fold(getattr(parent, conv_name), getattr(parent, bn_name)))
        setattr(parent, bn_name, nn.Identity())
    model.bn_folded = True
    return model


def expands_spikes(model: nn.Module) -> bool:
    """True for a family whose neurons emit integers (V3): its deployed form is ``model.expand_spikes()``."""
    return callable(getattr(model, "expand_spikes", None))


def deployed_form(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The form the spike-driven tools (verifier, energy report) look at: BN and RepConvs folded; a family whose
    neurons emit integers (V3) also expands them into binary spikes over virtual steps (``expand_spikes``)."""
    return model.expand_spikes(inplace=inplace) if expands_spikes(model) else fold_bn(model, inplace=inplace)


def prepare_inference(model: nn.Module, fold: bool = True, channels_last: bool | None = None,
                      compile: bool = False, lif_backend: str | None = None, repconv: str = "auto") -> nn.Module:
    """Eval-mode copy ready for fast inference (call it under ``torch.inference_mode()``).

    fold: BN and RepConvs folded into convs. repconv: the form of each folded RepConv, "auto" (per input size the
    one with fewer MACs: never more work than the unfolded model), "dense" (always the spike-driven 3x3) or "chain".
    channels_last: NHWC activations (default: keep the model's setting).
    compile: wrap in ``torch.compile`` (needs a working compiler toolchain; first call is slow).
    """
    m = fold_bn(model, repconv=repconv) if fold else copy.deepcopy(model).eval()
    if channels_last is not None and hasattr(m, "set_execution"):
        m.set_execution(channels_last=channels_last)  # activations and the conv weights' storage
    elif channels_last is not None and hasattr(m, "channels_last"):
        m.channels_last = channels_last
    if lif_backend is not None:
        from .neuron import set_backend

        set_backend(m, lif_backend)
    for p in m.parameters():
        p.requires_grad_(False)
    if compile:
        m = torch.compile(m, dynamic=False)
    return m
