"""Small building blocks shared by the model families: time folding, NHWC layout, spike-input convs, primitives.

Tensors are time-major ``[T, B, C, H, W]``. Convs/BNs see ``[T*B, C, H, W]`` (so BN statistics are over
T*B*H*W, as in the official code). The elementary attention operations are parameter-free modules so that
forward hooks (verifier, energy report, pictures) can see exactly what they compute on.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import is_exporting  # data-dependent input checks are skipped while exporting



def seq(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a per-frame module (conv, BN, pool) to a ``[T, B, ...]`` tensor by folding T into the batch."""
    T, B = x.shape[:2]
    y = module(x.flatten(0, 1))
    return y.reshape(T, B, *y.shape[1:])


def nhwc(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, C, H, W]`` with NHWC storage per frame (returned as is when it already has it)."""
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


_nhwc = nhwc


def conv_weights_layout(module: nn.Module, channels_last: bool) -> None:
    """Store every 4-D conv weight of ``module`` NHWC (``channels_last``) or NCHW, in place (same values).

    A channels_last conv reorders an NCHW weight on every call, forward and backward (measured 5% of a V2
    training step at 64 px), and its weight gradient then comes back NHWC while the optimizer's state is NCHW;
    with the weights stored NHWC neither happens. Call it before the optimizer is built (its state copies the
    layout of the parameters it first sees)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in module.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.Conv2d) and isinstance(w, torch.Tensor) and w.ndim == 4 \
                and not w.is_contiguous(memory_format=fmt):
            w.data = w.data.contiguous(memory_format=fmt)


def time_major_input(x: torch.Tensor, T: int, in_channels: int, stride: int, channels_last: bool,
                     why: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Validate a model input and return ``[T, B, C, H, W]`` (static ``[B,C,H,W]`` repeated T times, event frames
    ``[B,T,C,H,W]`` transposed). ``stride``: H and W must be divisible by it (``why`` says why). ``dtype``: the
    model's parameter dtype; a floating input of another precision (float64, float16, bfloat16) is cast to it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor input, got {type(x).__name__}")
    if x.ndim not in (4, 5):
        raise ValueError(
            f"expected input of rank 4 [B, C, H, W] (static image) or rank 5 [B, T, C, H, W] (event frames), "
            f"got rank {x.ndim} with shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"expected a floating-point input (float32, float64, float16 or bfloat16; cast to the model's dtype), "
            f"got {x.dtype}; convert images with x.float() (and normalise them) first"
        )
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    c, h, w = x.shape[-3:]
    if c != in_channels:
        raise ValueError(f"expected {in_channels} input channels (dim -3), got {c} in shape {tuple(x.shape)}")
    if h % stride or w % stride:
        raise ValueError(
            f"input height and width must be divisible by {stride} ({why}), got {h}x{w}; "
            f"e.g. use {math.ceil(h / stride) * stride}x{math.ceil(w / stride) * stride}"
        )
    if x.ndim == 5 and x.shape[1] != T:
        raise ValueError(
            f"event input [B, T, C, H, W] must have T={T} frames (dim 1), got {x.shape[1]}; "
            f"re-frame the events or build the model with T={x.shape[1]}"
        )
    if not x.is_meta and not is_exporting() and not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"input contains {bad} NaN/inf value(s); the network needs finite inputs")
    xt = x.unsqueeze(0).expand(T, *x.shape) if x.ndim == 4 else x.transpose(0, 1)
    # channels_last: materialise [T,B,C,H,W] with NHWC storage, so every [T*B,C,H,W] view is NHWC for free
    return nhwc(xt) if channels_last else xt



class _TokenMeanNHWC(torch.autograd.Function):
    """Mean over the token axes of an NHWC-stored ``[T, B, C, H, W]``. Autograd's own backward is an expanded
    NCHW view; added into the residual path it turns every gradient upstream of the head NCHW, and PyTorch's
    BatchNorm backward on an NHWC input with an NCHW gradient is about 2x slower (SDT 1-128 training step: BN
    23-27 -> 13-16 ms). This backward materialises the gradient once, in NHWC storage."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.flatten(3).mean(3)

    @staticmethod
    def backward(ctx, g):
        T, B, C, H, W = ctx.shape
        return _nhwc((g / (H * W))[..., None, None].expand(T, B, C, H, W))


def token_mean(x: torch.Tensor, nhwc_grad: bool = False) -> torch.Tensor:
    """``[T, B, C, H, W] -> [T, B, C]`` mean over tokens; ``nhwc_grad``: its gradient comes back NHWC-stored."""
    if nhwc_grad and torch.is_grad_enabled() and x.requires_grad:
        return _TokenMeanNHWC.apply(x)
    return x.flatten(3).mean(3)


def erode(x: torch.Tensor) -> torch.Tensor:
    """DVS-mode "Erode" of the official code: a 3x3 max over the last two axes of a 5-D tensor (stride 1).

    PyTorch's 3-D pooling reads a 5-D tensor as (N, C, D, H, W), so for ``[T,B,C,H,W]`` this is a spatial
    dilation per channel and for the head layout ``[T,B,h,N,d]`` a max over neighbouring (token, lane) pairs.
    """
    return F.max_pool3d(x, kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth on a ``[T, B, ...]`` branch output: one keep/drop decision per sample, shared over T."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((1, x.shape[1]) + (1,) * (x.ndim - 2)).bernoulli_(keep)
    return x * mask / keep


# --------------------------------------------------------------------------------------------------
# Pointwise (1x1) convolution on few positions as one matrix product
# --------------------------------------------------------------------------------------------------
# On the CPU a 1x1 conv over few positions (V2/V3 transformer stages: 2x2 or 4x4 tokens) spends most of its time
# in oneDNN's per-call set-up: as a matrix product over the NHWC rows it runs 1.3-2x faster forward and backward
# (measured on [64, 128, 2, 2] -> 128: 442 vs 204 us). Above some 2k rows the conv is as fast or faster.
POINTWISE_MM_MAX_ROWS = 2048


def pointwise_as_matmul(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where the 1x1 conv of ``x`` ``[N, C, H, W]`` with ``weight`` ``[O, C, 1, 1]`` (stride 1, no padding,
    1 group) runs faster as a matrix product: CPU, NHWC storage, at most ``POINTWISE_MM_MAX_ROWS`` positions."""
    if is_exporting():  # first: the row count below would put a guard on an exported graph's dynamic batch
        return False
    return (x.device.type == "cpu" and x.ndim == 4 and weight.shape[-2:] == (1, 1)
            and x.permute(0, 2, 3, 1).is_contiguous() and x.shape[0] * x.shape[2] * x.shape[3] <= POINTWISE_MM_MAX_ROWS)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N*H*W, C]`` (a view of NHWC storage, else a copy)."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _grid(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[N*H*W, O]`` -> ``[N, O, H, W]`` with NHWC storage (a view)."""
    N, _, H, W = like.shape
    return rows.view(N, H, W, rows.shape[1]).permute(0, 3, 1, 2)


def pointwise_conv(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """1x1 conv of ``x`` ``[N, C, H, W]`` with ``w2d`` ``[O, C]`` as one matrix product (NHWC result)."""
    rows = _rows(x)
    y = torch.addmm(bias, rows, w2d.t()) if bias is not None else rows @ w2d.t()
    return _grid(y, x)


def pointwise_conv_backward(grad: torch.Tensor, x: torch.Tensor, w2d: torch.Tensor, need: tuple[bool, bool, bool]):
    """Gradients ``(input, weight [O, C], bias)`` of :func:`pointwise_conv` (None where not needed)."""
    g = _rows(grad)
    gx = _grid(g @ w2d, x) if need[0] else None
    gw = g.t() @ _rows(x) if need[1] else None
    gb = g.sum(0) if need[2] else None
    return gx, gw, gb


# --------------------------------------------------------------------------------------------------
# Convolution on spike input that keeps its saved input as uint8 (spikes are exactly 0/1: lossless, 4x smaller)
# --------------------------------------------------------------------------------------------------
class _SpikeConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, dtype, compact, as_matmul):
        if dtype is not None:  # autocast: run (and later differentiate) in the autocast dtype
            x, w, b = x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
        else:
            w, b = weight, bias
        ctx.save_for_backward(x.to(torch.uint8) if compact else x, w)
        ctx.conf = (x.dtype, stride, padding, dilation, groups, bias is not None, weight.dtype)
        ctx.as_matmul = as_matmul
        if as_matmul:
            return pointwise_conv(x, w.flatten(1), b)
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        xq, w = ctx.saved_tensors
        x_dtype, stride, padding, dilation, groups, has_bias, w_dtype = ctx.conf
        x = xq.to(x_dtype)  # .to keeps the (channels_last) strides
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2])
        if ctx.as_matmul:
            gi, gw, gb = pointwise_conv_backward(grad.to(x_dtype), x, w.flatten(1), need)
            gw = None if gw is None else gw.view(w.shape)
        else:
            gi, gw, gb = torch.ops.aten.convolution_backward(
                grad.to(x_dtype), x, w, [w.shape[0]] if has_bias else None, list(stride), list(padding),
                list(dilation), False, [0, 0], groups, list(need))
        return (gi, None if gw is None else gw.to(w_dtype), None if gb is None else gb.to(w_dtype), None, None,
                None, None, None, None, None)


def _plain_pointwise(stride, padding, dilation, groups) -> bool:
    return tuple(stride) == (1, 1) and tuple(padding) == (0, 0) and tuple(dilation) == (1, 1) and groups == 1


class SpikeConv2d(nn.Conv2d):
    """``nn.Conv2d`` for binary spike inputs: identical math and state_dict; in training the input saved for
    the backward pass is stored as uint8 instead of float (``compact=False`` or a non-binary-input variant turns
    it off). Only used where the model guarantees 0/1 inputs."""

    def __init__(self, *args, compact: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self._compact_allowed = compact  # False where the input may be non-binary (SEW sums, softmax output)
        self.compact = compact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        return spike_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                            self.compact)


def spike_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride=(1, 1), padding=(0, 0),
                 dilation=(1, 1), groups: int = 1, compact: bool = True) -> torch.Tensor:
    """``F.conv2d`` (zero padding) on a binary input ``x``: in training the saved input is uint8 when ``compact``;
    a 1x1 conv over few NHWC positions runs as one matrix product (:func:`pointwise_as_matmul`)."""
    pointwise = _plain_pointwise(stride, padding, dilation, groups) and pointwise_as_matmul(x, weight)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad) and (compact or pointwise):
        # one autograd Function for both settings of compact: the gradients stay bit-identical
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        return _SpikeConvFn.apply(x, weight, bias, stride, padding, dilation, groups, dtype, compact, pointwise)
    if pointwise:  # no gradient needed
        return pointwise_conv(x, weight.flatten(1), bias)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


# --------------------------------------------------------------------------------------------------
# Elementary SDSA operations as (parameter-free) modules, so hooks can prove what they compute on.
# --------------------------------------------------------------------------------------------------
class SpikeMask(nn.Module):
    """Hadamard product of two tensors; between binary spike tensors it is a mask (logical AND)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


class TokenSum(nn.Module):
    """Column sum over the token axis (dim -2, keepdim): on binary input, counting = additions only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=-2, keepdim=True)


class SpikeMatmul(nn.Module):
    """Matrix product ``a @ b`` (used by the non-spike-driven SSA/softmax comparison variants)."""

    integer_operand: int | None = None  # which operand may hold integers (the other one is binary): additions

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


class SpikeRowMatmul(SpikeMatmul):
    """``a @ b`` with ``a`` binary: each 1 in a row of ``a`` adds one row of ``b`` (which may hold integers), so the
    product is additions of rows, no multiplication (V2's Q @ (Kᵀ V))."""

    integer_operand = 1
