"""Re-parameterisable convolution (Spike-driven Transformer V2's RepConv) and its BN-valued padding.

In training, RepConv is a small sequence (1x1 conv, BatchNorm with a BN(0)-valued border, depthwise 3x3, 1x1 conv,
BatchNorm); in eval mode it is one linear map of its input, so :meth:`RepConv.fused_conv` folds it exactly into a
single padded 3x3 conv with bias (what ``spikedriven.inference`` does for every module with ``fused_conv``).
"""
from __future__ import annotations

import torch
from torch import nn

from .ops import SpikeConv2d

__all__ = ["BNAndPad", "RepConv", "is_nhwc", "bn_affine"]


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

    @torch.no_grad()
    def fused_conv(self, bn_after: nn.BatchNorm2d | None = None) -> SpikeConv2d:
        """One 3x3 conv (padding 1, bias) equal to this RepConv in eval mode (then ``bn_after``, if given).
        It is a :class:`SpikeConv2d` (an ``nn.Conv2d``) whose compact mode follows the first 1x1 conv's.

        With z = W1 x, BNAndPad gives ``a1 * zeropad(z) + c1`` (the border is BN(0) = c1), so the depthwise conv
        gives ``a1 * dw(zeropad(z)) + c1 * sum(dw kernel)``; zero-padding commutes with the bias-free 1x1 conv, so
        ``dw(zeropad(W1 x))`` is a padded 3x3 conv of x. The 1x1 conv W2 and the BNs are then linear/affine.
        Computed in float64, returned in the weights' dtype and device.
        """
        w1 = self.body[0].weight.double()[:, :, 0, 0]  # [C, Cin]
        a1, c1 = bn_affine(self.body[1].bn)
        dw, pw, bn2 = self.body[2]
        kd = dw.weight.double()[:, 0]  # [C, 3, 3]
        w2 = pw.weight.double()[:, :, 0, 0]  # [Cout, C]
        kernel = torch.einsum("oc,c,cuv,ci->oiuv", w2, a1, kd, w1)
        bias = w2 @ (c1 * kd.sum((1, 2)))
        for bn in (bn2, bn_after) if bn_after is not None else (bn2,):
            scale, shift = bn_affine(bn)
            kernel, bias = kernel * scale.view(-1, 1, 1, 1), bias * scale + shift
        first = self.body[0]
        binary = isinstance(first, SpikeConv2d)  # the fused conv reads what the first 1x1 conv read
        fused = SpikeConv2d(w1.shape[1], w2.shape[0], 3, 1, 1, bias=True, device=first.weight.device,
                            dtype=first.weight.dtype, compact=binary)
        fused.compact = binary and first.compact
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        return fused
