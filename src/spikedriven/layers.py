"""Building blocks of the Spike-driven Transformer: SPS stem, SDSA (and ablation variants), MLP, block.

Tensors are time-major ``[T, B, C, H, W]``. Convs/BNs see ``[T*B, C, H, W]`` (so BN statistics are over
T*B*H*W, as in the official code). Module and parameter names follow the official implementation exactly,
so official checkpoints load strictly.

Shortcut modes (paper §3.3 / Fig. 2):
  "ms"   membrane shortcut (default): neurons sit at the *start* of each branch and residuals add real-valued
         membrane potentials, so every conv/linear input is a binary spike tensor.
  "sew"  spike-element-wise (Spikformer/SEW-ResNet): neurons at the *end* of each branch, spikes are added,
         so the next layer sees integer "multi-bit spikes" (not spike-driven).
  "none" no residual connection.
Attention modes: "sdsa" (paper's Version 2 = official code), "sdsa_v1", "ssa" (Spikformer), "softmax".
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .neuron import make_neuron

ATTN_MODES = ("sdsa", "sdsa_v1", "ssa", "softmax")
SHORTCUTS = ("ms", "sew", "none")


def seq(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a per-frame module (conv, BN, pool) to a ``[T, B, ...]`` tensor by folding T into the batch."""
    T, B = x.shape[:2]
    y = module(x.flatten(0, 1))
    return y.reshape(T, B, *y.shape[1:])


def nhwc(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, C, H, W]`` with NHWC storage per frame (returned as is when it already has it)."""
    return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


_nhwc = nhwc


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
# Convolution on spike input that keeps its saved input as uint8 (spikes are exactly 0/1: lossless, 4x smaller)
# --------------------------------------------------------------------------------------------------
class _SpikeConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dtype):
        if dtype is not None:  # autocast: run (and later differentiate) in the autocast dtype
            x, w, b = x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
        else:
            w, b = weight, bias
        ctx.save_for_backward(x.to(torch.uint8), w)
        ctx.conf = (x.dtype, stride, padding, bias is not None, weight.dtype)
        return F.conv2d(x, w, b, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        xq, w = ctx.saved_tensors
        x_dtype, stride, padding, has_bias, w_dtype = ctx.conf
        x = xq.to(x_dtype)  # .to keeps the (channels_last) strides
        gi, gw, gb = torch.ops.aten.convolution_backward(
            grad.to(x_dtype), x, w, [w.shape[0]] if has_bias else None, list(stride), list(padding), [1, 1], False,
            [0, 0], 1, [ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]])
        return (gi, None if gw is None else gw.to(w_dtype), None if gb is None else gb.to(w_dtype), None, None,
                None)


class SpikeConv2d(nn.Conv2d):
    """``nn.Conv2d`` for binary spike inputs: identical math and state_dict; in training the input saved for
    the backward pass is stored as uint8 instead of float (``compact=False`` or a non-binary-input variant turns
    it off). Only used where the model guarantees 0/1 inputs."""

    def __init__(self, *args, compact: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self._compact_allowed = compact  # False where the input may be non-binary (SEW sums, softmax output)
        self.compact = compact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.compact and torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        return _SpikeConvFn.apply(x, self.weight, self.bias, self.stride, self.padding, dtype)


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

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


# --------------------------------------------------------------------------------------------------
# Spiking Patch Splitting (stem)
# --------------------------------------------------------------------------------------------------
class MS_SPS(nn.Module):
    """4 x (conv3x3-BN-LIF[-maxpool]) with channels D/8, D/4, D/2, D, then a relative-position conv shortcut."""

    def __init__(self, in_channels, embed_dim, pooling_stat="1111", spike_mode="lif", shortcut="ms"):
        super().__init__()
        self.pooling_stat = pooling_stat
        self.shortcut = shortcut
        # The model's channels_last switch: keep activations in NHWC storage. A 1-channel NHWC image is also
        # NCHW-contiguous, so without this the first conv returns NCHW and every later layer follows it.
        self.channels_last = False
        d = embed_dim
        chans = [in_channels, d // 8, d // 4, d // 2, d]
        suffix = ["", "1", "2", "3"]
        for i, s in enumerate(suffix):
            conv = nn.Conv2d if i == 0 else partial(SpikeConv2d, compact=True)  # first conv sees the image
            self.add_module(f"proj_conv{s}", conv(chans[i], chans[i + 1], 3, 1, 1, bias=False))
            self.add_module(f"proj_bn{s}", nn.BatchNorm2d(chans[i + 1]))
            self.add_module(f"proj_lif{s}", make_neuron(spike_mode))
            self.add_module(f"maxpool{s}", nn.MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1))
        self.rpe_conv = SpikeConv2d(d, d, 3, 1, 1, bias=False, compact=True)  # input: proj_lif3 spikes
        self.rpe_bn = nn.BatchNorm2d(d)
        # Constructed but never called by the official MS forward (kept for PLIF state-dict parity);
        # used as the branch-end neuron in the SEW ablation.
        self.rpe_lif = make_neuron(spike_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stat = self.pooling_stat
        for i, s in enumerate(["", "1", "2"]):
            x = seq(getattr(self, f"proj_conv{s}"), x)
            if i == 0 and self.channels_last:
                x = _nhwc(x)
            x = seq(getattr(self, f"proj_bn{s}"), x)
            x = getattr(self, f"proj_lif{s}")(x)
            if stat[i] == "1":
                x = seq(getattr(self, f"maxpool{s}"), x)
        # Stage 3: the pool acts on the BN output (real values), before the neuron.
        x = seq(self.proj_bn3, seq(self.proj_conv3, x))
        if stat[3] == "1":
            x = seq(self.maxpool3, x)
        x_feat = x
        s = self.proj_lif3(x)
        rpe = seq(self.rpe_bn, seq(self.rpe_conv, s))
        if self.shortcut == "ms":
            return rpe + x_feat  # membrane shortcut: real-valued output
        if self.shortcut == "sew":
            return s + self.rpe_lif(rpe)  # integer spikes
        return rpe


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------
class MS_SSA_Conv(nn.Module):
    """Spike-Driven Self-Attention with its own input neuron, 1x1-conv Q/K/V/out projections and shortcut.

    sdsa (Version 2, official):  Y = Q ⊙ SN_0.5( SUM_tokens(K ⊙ V) )
    sdsa_v1:                     Y = SN_0.5( SUM_tokens(Q ⊙ K) ) ⊙ V
    ssa (Spikformer):            Y = SN_0.5( Q Kᵀ V · 0.125 )            (integer matmuls + scale)
    softmax (vanilla):           Y = softmax(Q Kᵀ / sqrt(d)) V            (real-valued, for comparison)
    """

    def __init__(self, dim, num_heads=8, spike_mode="lif", dvs_mode=False, attn_mode="sdsa", shortcut="ms",
                 drop_path_rate=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim ({dim}) must be divisible by num_heads ({num_heads})")
        if attn_mode not in ATTN_MODES:
            raise ValueError(f"attn_mode must be one of {ATTN_MODES}, got {attn_mode!r}")
        self.dim, self.num_heads = dim, num_heads
        self.dvs_mode, self.attn_mode, self.shortcut = dvs_mode, attn_mode, shortcut
        self.drop_path_rate = drop_path_rate
        self.scale = 0.125  # Spikformer's SSA scale (used by attn_mode="ssa" only)
        self.shortcut_lif = make_neuron(spike_mode)
        binary_in = shortcut != "sew"
        for n in "qkv":
            self.add_module(f"{n}_conv", SpikeConv2d(dim, dim, 1, 1, bias=False, compact=binary_in))
            self.add_module(f"{n}_bn", nn.BatchNorm2d(dim))
            self.add_module(f"{n}_lif", make_neuron(spike_mode))
        # Official no-ops kept for checkpoint compatibility: attn_lif is never called by SDSA (used here
        # by the SSA variant), talking_heads is never called but its [h,h,1] weight is in the state_dict.
        self.attn_lif = make_neuron(spike_mode, v_threshold=0.5)
        self.talking_heads = nn.Conv1d(num_heads, num_heads, kernel_size=1, stride=1, bias=False)
        self.talking_heads_lif = make_neuron(spike_mode, v_threshold=0.5)
        self.proj_conv = SpikeConv2d(dim, dim, 1, 1, compact=attn_mode != "softmax")
        self.proj_bn = nn.BatchNorm2d(dim)
        self.mask_kv = SpikeMask()
        self.mask_q = SpikeMask()
        self.token_sum = TokenSum()
        self.matmul_qk = SpikeMatmul()
        self.matmul_av = SpikeMatmul()

    def _heads(self, x):  # [T,B,C,H,W] -> [T,B,h,N,d]
        T, B, C, H, W = x.shape
        return x.flatten(3).transpose(-1, -2).reshape(T, B, H * W, self.num_heads, C // self.num_heads).permute(
            0, 1, 3, 2, 4)

    def _unheads(self, y, shape):  # [T,B,h,N,d] -> [T,B,C,H,W]
        return y.transpose(3, 4).reshape(shape)

    def attention(self, q, k, v):
        """q, k, v: [T,B,h,N,d] (binary spikes). Returns [T,B,h,N,d]."""
        dvs = self.dvs_mode
        if self.attn_mode == "sdsa":
            kv = self.mask_kv(k, v)
            if dvs:
                kv = erode(kv)
            mask = self.talking_heads_lif(self.token_sum(kv))  # [T,B,h,1,d] binary channel mask
            y = self.mask_q(q, mask)
        elif self.attn_mode == "sdsa_v1":
            qk = self.mask_kv(q, k)
            if dvs:
                qk = erode(qk)
            mask = self.talking_heads_lif(self.token_sum(qk))
            y = self.mask_q(mask, v)
        elif self.attn_mode == "ssa":
            attn = self.matmul_qk(q, k.transpose(-2, -1))  # [T,B,h,N,N] integer
            y = self.attn_lif(self.matmul_av(attn, v) * self.scale)
        else:  # softmax
            d = q.shape[-1]
            attn = torch.softmax(self.matmul_qk(q, k.transpose(-2, -1)) * d**-0.5, dim=-1)
            y = self.matmul_av(attn, v)
        if dvs:
            y = erode(y)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        s = self.shortcut_lif(x) if self.shortcut != "sew" else x
        q = self.q_lif(seq(self.q_bn, seq(self.q_conv, s)))
        k = self.k_lif(seq(self.k_bn, seq(self.k_conv, s)))
        v = self.v_lif(seq(self.v_bn, seq(self.v_conv, s)))
        if self.dvs_mode:
            k, v = erode(k), erode(v)
        y = self._unheads(self.attention(self._heads(q), self._heads(k), self._heads(v)), x.shape)
        out = seq(self.proj_bn, seq(self.proj_conv, y))
        if self.shortcut == "sew":
            out = self.shortcut_lif(out)
        out = drop_path(out, self.drop_path_rate, self.training)
        return out + identity if self.shortcut != "none" else out


class MS_MLP_Conv(nn.Module):
    """Two 1x1 convs (D -> hidden -> D) with BN, a neuron before each conv (MS) and the block's shortcut."""

    def __init__(self, in_features, hidden_features=None, spike_mode="lif", shortcut="ms", drop_path_rate=0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.shortcut, self.drop_path_rate = shortcut, drop_path_rate
        binary_in = shortcut != "sew"
        self.fc1_conv = SpikeConv2d(in_features, hidden_features, 1, 1, compact=binary_in)
        self.fc1_bn = nn.BatchNorm2d(hidden_features)
        self.fc1_lif = make_neuron(spike_mode)
        self.fc2_conv = SpikeConv2d(hidden_features, in_features, 1, 1, compact=True)
        self.fc2_bn = nn.BatchNorm2d(in_features)
        self.fc2_lif = make_neuron(spike_mode)
        self.c_hidden, self.c_output = hidden_features, in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        if self.shortcut == "sew":
            h = self.fc1_lif(seq(self.fc1_bn, seq(self.fc1_conv, x)))
            out = self.fc2_lif(seq(self.fc2_bn, seq(self.fc2_conv, h)))
        else:
            h = seq(self.fc1_bn, seq(self.fc1_conv, self.fc1_lif(x)))
            out = seq(self.fc2_bn, seq(self.fc2_conv, self.fc2_lif(h)))
        out = drop_path(out, self.drop_path_rate, self.training)
        return out + identity if self.shortcut != "none" else out


class MS_Block_Conv(nn.Module):
    """One encoder block: SDSA then MLP, each with its own (membrane) shortcut."""

    def __init__(self, dim, num_heads=8, mlp_ratio=4.0, spike_mode="lif", dvs_mode=False, attn_mode="sdsa",
                 shortcut="ms", drop_path_rate=0.0):
        super().__init__()
        self.attn = MS_SSA_Conv(dim, num_heads, spike_mode, dvs_mode, attn_mode, shortcut, drop_path_rate)
        self.mlp = MS_MLP_Conv(dim, int(dim * mlp_ratio), spike_mode, shortcut, drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x))
