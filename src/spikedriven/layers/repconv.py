"""Re-parameterisable convolution (Spike-driven Transformer V2's RepConv) and its BN-valued padding.

In training, RepConv is a small sequence (1x1 conv, BatchNorm with a BN(0)-valued border, depthwise 3x3, 1x1 conv,
BatchNorm); in eval mode it is one linear map of its input, so :meth:`RepConv.fused_conv` folds it exactly into a
single padded 3x3 conv with bias (what ``spikedriven.inference`` does for every module with ``fused_conv``).
That dense 3x3 is the spike-driven form (one conv reading binary spikes) but costs 9·Cin·Cout multiply-accumulates
per pixel against Cin² + 9·Cin + Cin·Cout for the chain it replaces, so the dense evaluation path
(:class:`RepConvEval`) keeps both and runs, per input size, the one with fewer MACs (:func:`repconv_macs`).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .ops import SpikeConv2d

__all__ = ["BNAndPad", "RepConv", "RepConvEval", "repconv_macs", "is_nhwc", "bn_affine"]


def is_nhwc(x: torch.Tensor) -> bool:
    """True if a ``[..., C, H, W]`` tensor has channels-last storage (and not also plain contiguous)."""
    x = x.flatten(0, -4) if x.ndim > 4 else x
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as ``y = scale * x + shift`` per channel (float64)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, bn.bias.double() - bn.running_mean.double() * scale


class BNAndPad(nn.Module):
    """BatchNorm2d, then a ``pad``-pixel border filled with what the BN outputs for a zero input.

    The border value per channel is ``bias - running_mean * weight / sqrt(running_var + eps)``: it uses the
    running statistics (in training: as they are *after* this forward's update, the BN has just run), detached
    weight and bias, and no gradient flows through it. In eval mode the layer therefore equals "zero-pad, then
    BN", which is what makes :class:`RepConv` foldable into a single padded 3x3 conv. State-dict keys: ``bn.*``.
    """

    def __init__(self, num_features: int, pad: int = 1):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features)
        self.pad = pad

    def border_value(self) -> torch.Tensor:
        bn = self.bn
        return bn.bias.detach() - bn.running_mean * bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        p = self.pad
        if p == 0:
            return y
        n, c, h, w = y.shape
        fmt = torch.channels_last if is_nhwc(y) else torch.contiguous_format
        out = torch.empty((n, c, h + 2 * p, w + 2 * p), dtype=y.dtype, device=y.device, memory_format=fmt)
        out.copy_(self.border_value().to(y.dtype).view(1, c, 1, 1).expand_as(out))  # constant border, no grad
        out[:, :, p:h + p, p:w + p] = y
        return out


class RepConv(nn.Module):
    """Re-parameterisable 3x3 conv (keys ``body.0``, ``body.1.bn``, ``body.2.{0,1,2}`` as official).

    body.0  1x1 conv Cin -> Cin (no bias)          - reads binary spikes in V2 (a :class:`SpikeConv2d`)
    body.1  BNAndPad(Cin, pad 1)
    body.2  depthwise 3x3 conv, padding 0 (no bias) -> 1x1 conv Cin -> Cout (no bias) -> BatchNorm2d(Cout)

    In eval mode this is one linear map of its input: :meth:`fused_conv` returns the equivalent 3x3 conv
    (padding 1, with bias), optionally with a following BatchNorm2d folded in as well.
    """

    def __init__(self, in_channels: int, out_channels: int, binary_input: bool = True):
        super().__init__()
        conv1x1 = (SpikeConv2d if binary_input else nn.Conv2d)(in_channels, in_channels, 1, 1, 0, bias=False)
        self.body = nn.Sequential(
            conv1x1,
            BNAndPad(in_channels, pad=1),
            nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, 1, 0, groups=in_channels, bias=False),
                nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
                nn.BatchNorm2d(out_channels),
            ),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def _eval_maps(self, bn_after: nn.BatchNorm2d | None):
        """The eval-mode RepConv as float64 pieces: y = W2 (dw_pad1(diag(a1) W1 x) + c1 * sum(dw)) then the BNs.

        With z = W1 x, BNAndPad gives ``a1 * zeropad(z) + c1`` (the border is BN(0) = c1), so the depthwise conv
        gives ``a1 * dw(zeropad(z)) + c1 * sum(dw kernel)``. Returns (W1 scaled by a1 [C, Cin], dw kernels
        [C, 3, 3], W2 with the BNs' scales [Cout, C], bias [Cout])."""
        w1 = self.body[0].weight.double()[:, :, 0, 0]  # [C, Cin]
        a1, c1 = bn_affine(self.body[1].bn)
        dw, pw, bn2 = self.body[2]
        kd = dw.weight.double()[:, 0]  # [C, 3, 3]
        w2 = pw.weight.double()[:, :, 0, 0]  # [Cout, C]
        bias = w2 @ (c1 * kd.sum((1, 2)))
        for bn in (bn2, bn_after) if bn_after is not None else (bn2,):
            scale, shift = bn_affine(bn)
            w2, bias = w2 * scale.view(-1, 1), bias * scale + shift
        return a1.view(-1, 1) * w1, kd, w2, bias

    @torch.no_grad()
    def fused_conv(self, bn_after: nn.BatchNorm2d | None = None) -> SpikeConv2d:
        """One 3x3 conv (padding 1, bias) equal to this RepConv in eval mode (then ``bn_after``, if given).
        It is a :class:`SpikeConv2d` (an ``nn.Conv2d``) whose compact mode follows the first 1x1 conv's.

        Zero-padding commutes with the bias-free 1x1 conv, so ``dw(zeropad(W1 x))`` is a padded 3x3 conv of x
        (see :meth:`_eval_maps`); W2 and the BNs are then linear/affine. Computed in float64, returned in the
        weights' dtype and device.
        """
        w1, kd, w2, bias = self._eval_maps(bn_after)
        kernel = torch.einsum("oc,cuv,ci->oiuv", w2, kd, w1)
        first = self.body[0]
        binary = isinstance(first, SpikeConv2d)  # the fused conv reads what the first 1x1 conv read
        fused = SpikeConv2d(w1.shape[1], w2.shape[0], 3, 1, 1, bias=True, device=first.weight.device,
                            dtype=first.weight.dtype, compact=binary)
        fused.compact = binary and first.compact
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        return fused

    @torch.no_grad()
    def chain_convs(self, bn_after: nn.BatchNorm2d | None = None) -> nn.Sequential:
        """The same eval-mode map as three convs: 1x1 (BNAndPad's scale folded in) -> depthwise 3x3 with zero
        padding 1 -> 1x1 with bias (BNAndPad's border, BN and ``bn_after`` folded in). Not spike-driven: the
        depthwise and the last 1x1 conv read real values. Computed in float64, returned in the weights' dtype."""
        w1, kd, w2, bias = self._eval_maps(bn_after)
        first = self.body[0]
        kw = dict(device=first.weight.device, dtype=first.weight.dtype)
        c, cin, cout = w1.shape[0], w1.shape[1], w2.shape[0]
        pw1 = (SpikeConv2d(cin, c, 1, bias=False, compact=False, **kw) if isinstance(first, SpikeConv2d)
               else nn.Conv2d(cin, c, 1, bias=False, **kw))
        dw = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False, **kw)
        pw2 = nn.Conv2d(c, cout, 1, bias=True, **kw)
        for conv, w in ((pw1, w1[:, :, None, None]), (dw, kd[:, None]), (pw2, w2[:, :, None, None])):
            conv.weight.copy_(w)
        pw2.bias.copy_(bias)
        dw.nonbinary_input = pw2.nonbinary_input = ("RepConv chain (dense evaluation form): reads the real-valued "
                                                    "output of the previous conv")
        return nn.Sequential(pw1, dw, pw2)

    def eval_form(self, bn_after: nn.BatchNorm2d | None = None, mode: str = "auto") -> "RepConvEval":
        """Both inference forms in one eval-only module (see :class:`RepConvEval`)."""
        return RepConvEval(self.fused_conv(bn_after), self.chain_convs(bn_after), mode)


def repconv_macs(cin: int, cout: int, h: int, w: int) -> tuple[int, int]:
    """Exact multiply-accumulates of an eval-mode RepConv on one ``h x w`` map (per image and time step), as
    ``(folded dense 3x3, 1x1 -> depthwise 3x3 -> 1x1 chain)``.

    Taps on the zero padding are not counted: over an n-pixel line a 3-tap, pad-1 kernel has 3n - 2 taps inside
    the map, so a 3x3 conv has (3h-2)(3w-2) per input/output channel pair. Dense: cout·cin·taps; chain: cin²·h·w
    (1x1) + cin·taps (depthwise) + cout·cin·h·w (1x1). Bias additions (cout per pixel in both) are left out."""
    taps = (3 * h - 2) * (3 * w - 2)
    return cout * cin * taps, cin * cin * h * w + cin * taps + cout * cin * h * w


_MODES = ("auto", "dense", "chain")


class RepConvEval(nn.Module):
    """An eval-mode RepConv in the dense evaluation path: the folded 3x3 (``dense``) and the 1x1 -> depthwise 3x3 ->
    1x1 chain (``chain``), equal maps up to float rounding. ``mode="auto"`` runs, per call, the form with fewer
    MACs for the input's spatial size (:func:`repconv_macs`; ties go to the dense conv): the chain except on the
    smallest maps, where most of the dense kernel's taps fall on padding. Inference only (no BN, no training form).

    The spike-driven form is ``dense`` alone: :meth:`dense_form` returns it, and ``spikedriven.inference.fold_bn``
    (verify, energy, the engines) replaces this module by it.
    """

    def __init__(self, dense: nn.Conv2d, chain: nn.Sequential, mode: str = "auto"):
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
        self.dense, self.chain, self.mode = dense, chain, mode
        self.in_channels, self.out_channels = dense.in_channels, dense.out_channels

    def uses_dense(self, h: int, w: int) -> bool:
        """True if a ``h x w`` input runs through the folded 3x3."""
        if self.mode != "auto":
            return self.mode == "dense"
        dense, chain = repconv_macs(self.in_channels, self.out_channels, h, w)
        return dense <= chain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.dense if self.uses_dense(x.shape[-2], x.shape[-1]) else self.chain)(x)

    def dense_form(self) -> nn.Conv2d:
        """A copy of the folded 3x3 conv: the spike-driven form (binary input)."""
        return copy.deepcopy(self.dense)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, mode={self.mode}"
