"""Spike-driven Transformer V2 / Meta-SpikeFormer (Yao et al., ICLR 2024), faithful to the official code.

    x [B,C,H,W] (repeated over T)  or  [B,T,C,H,W] (event frames)
      stage 1  downsample1_1 (7x7/2 conv on the image, D0/2) -> ConvBlock1_1
               downsample1_2 (LIF, 3x3/2 conv, D0)           -> ConvBlock1_2
      stage 2  downsample2   (LIF, 3x3/2 conv, D1)           -> ConvBlock2_1 -> ConvBlock2_2
      stage 3  downsample3   (LIF, 3x3/2 conv, D2)           -> block3.0 .. block3.5   (spike linear attention)
      stage 4  downsample4   (LIF, 3x3/1 conv, D3)           -> block4.0 .. block4.1
      -> mean over tokens -> LIF -> Linear (and Linear head_kd with kd=True) -> mean over T

Every tensor between layers is time-major ``[T, B, C, H, W]``; convs and BatchNorms see ``[T*B, ...]`` (T folded
into the batch, so BN statistics are over T*B*H*W, as in the official code). Module and parameter names are the
official ones (``Spiking_vit_MetaFormer`` in BICLab/Spike-Driven-Transformer-V2 ``classification/models.py``), so
official checkpoints load with ``strict=True``. Residuals are membrane shortcuts: each branch starts with a LIF,
so every conv input is binary except the first conv, the inside of a RepConv during training and SepConv's
``pwconv2`` (after the depthwise conv).

Neurons are our stateless multi-step :class:`~spikedriven.neuron.LIF` (tau 2, V_th 1; ``attn_lif`` V_th 0.5):
there is no ``reset_net`` to call between batches.

Inference form: :func:`fold_repconv` turns every ``Sequential(RepConv, BatchNorm2d)`` of the attention (q, k, v
and proj) into one 3x3 conv with bias that reads the binary spikes directly; in eval mode the result is the same
up to float rounding. That is the spike-driven form; the dense evaluation path (``prepare_inference``) runs each
branch in whichever of that conv and the 1x1 -> depthwise 3x3 -> 1x1 chain needs fewer MACs for the input size.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from ..inference import fold_reparam
from ..layers.attention import Attention, register_attention
from ..layers.ops import (SpikeConv2d, SpikeMatmul, SpikeRowMatmul, conv_weights_layout, drop_path, nhwc, seq,
                          spike_conv2d, time_major_input, token_mean)
from ..layers.repconv import BNAndPad, RepConv, is_nhwc
from ..neuron import LIF, set_backend
from .registry import ModelFamily, ModelInfo, register_family, register_model

__all__ = [
    "BNAndPad",
    "RepConv",
    "SepConv",
    "MS_ConvBlock",
    "SpikeLinearAttention",
    "MS_Attention_RepConv_qkv_id",
    "TokenConv1d",
    "TokenBatchNorm1d",
    "MS_MLP",
    "MS_Block",
    "MS_DownSampling",
    "MetaSpikeFormer",
    "Spiking_vit_MetaFormer",
    "fold_repconv",
    "OFFICIAL_CONFIGS",
    "OFFICIAL_PARAMS",
    "OFFICIAL_PARAMS_KD",
    "OFFICIAL_STATE_DICT_LEN",
]

OFFICIAL_STRIDES = (2, 2, 2, 2, 1)  # downsample1_1, downsample1_2, downsample2, downsample3, downsample4


# --------------------------------------------------------------------------------------------------
# Conv stages (1 and 2)
# --------------------------------------------------------------------------------------------------
class SepConv(nn.Module):
    """Inverted separable conv (MobileNetV2 style) with spiking neurons, keys as official:

    LIF -> pwconv1 1x1 C->2C -> bn1 -> LIF -> dwconv 7x7 (pad 3, depthwise) -> pwconv2 1x1 2C->C -> bn2.
    No BN or neuron sits between dwconv and pwconv2 (they compose to one 7x7 map of binary input).
    """

    def __init__(self, dim: int, expansion_ratio: int = 2, kernel_size: int = 7, padding: int = 3):
        super().__init__()
        med = int(expansion_ratio * dim)
        self.lif1 = LIF()
        self.pwconv1 = SpikeConv2d(dim, med, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(med)
        self.lif2 = LIF()
        self.dwconv = nn.Conv2d(med, med, kernel_size, padding=padding, groups=med, bias=False)
        self.pwconv2 = nn.Conv2d(med, dim, 1, 1, bias=False)
        self.pwconv2.nonbinary_input = ("SepConv pwconv2 reads the depthwise 7x7 conv's real-valued output "
                                        "(multiply-accumulates; dwconv and pwconv2 compose to one 7x7 map of binary "
                                        "spikes)")
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = seq(self.bn1, seq(self.pwconv1, self.lif1(x)))
        return seq(self.bn2, seq(self.pwconv2, seq(self.dwconv, self.lif2(x))))


class MS_ConvBlock(nn.Module):
    """Conv block of stages 1-2: ``x = x + SepConv(x)``, then ``x + BN(conv3x3(LIF(BN(conv3x3(LIF(x))))))``.

    conv1: C -> mlp_ratio*C, conv2: back to C (3x3, pad 1, no bias). The official forward hard-codes 4*C in a
    reshape (only mlp_ratio 4 runs there); here any ratio works and 4 gives the official model.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.Conv = SepConv(dim)
        self.lif1 = LIF()
        self.conv1 = SpikeConv2d(dim, hidden, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.lif2 = LIF()
        self.conv2 = SpikeConv2d(hidden, dim, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv(x) + x
        y = seq(self.bn1, seq(self.conv1, self.lif1(x)))
        y = seq(self.bn2, seq(self.conv2, self.lif2(y)))
        return x + y


# --------------------------------------------------------------------------------------------------
# Transformer stages (3 and 4)
# --------------------------------------------------------------------------------------------------
@register_attention
class SpikeLinearAttention(Attention):
    """V2 spike-driven self-attention (official ``MS_Attention_RepConv_qkv_id``), dim C, h heads, d = C/h.

        S = head_lif(x)                                       binary
        Q, K, V = q_lif(BN(RepConv(S))), k_lif(...), v_lif(...)   binary, split into heads [T,B,h,N,d]
        Y = attn_lif( Q @ (K^T @ V) * 0.125 )                  V_th 0.5; K^T V is [d, d] of integer counts
        out = BN(RepConv(Y))                                   no neuron: the block adds it to its input

    K^T V counts coincidences of binary spikes (additions); Q @ (K^T V) adds, for every spike of Q, one row of
    those integer counts (additions of integer rows, no multiplication); the fixed scale 0.125 (official, for
    every head size) is a power of two, so ``attn_lif(0.125 X)`` equals a LIF of threshold 0.5 / 0.125 = 4 on X.
    """

    name = "spike_linear"
    layout = "sdt_v2"
    spike_driven = True
    output = "binary"
    operator_ops = ("additions: K^T V counts coincidences of binary spikes, Q @ (K^T V) adds integer rows "
                    "selected by the spikes of Q; the 0.125 scale is a power of two (a threshold of 4)")
    formula = "SN(Q (Kᵀ V) · 0.125)"

    def __init__(self, dim: int, num_heads: int = 8):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads = dim, num_heads
        self.scale = 0.125
        self.head_lif = LIF()
        self.q_conv = nn.Sequential(RepConv(dim, dim), nn.BatchNorm2d(dim))
        self.k_conv = nn.Sequential(RepConv(dim, dim), nn.BatchNorm2d(dim))
        self.v_conv = nn.Sequential(RepConv(dim, dim), nn.BatchNorm2d(dim))
        self.q_lif = LIF()
        self.k_lif = LIF()
        self.v_lif = LIF()
        self.attn_lif = LIF(v_threshold=0.5)
        self.proj_conv = nn.Sequential(RepConv(dim, dim), nn.BatchNorm2d(dim))
        self.matmul_kv = SpikeMatmul()  # K^T V: binary x binary -> integer counts
        self.matmul_q = SpikeRowMatmul()  # Q (K^T V): binary rows select integer rows

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C, H, W] -> [T, B, h, N, d]``."""
        T, B, C, H, W = x.shape
        return x.flatten(3).transpose(-1, -2).reshape(T, B, H * W, self.num_heads, C // self.num_heads).transpose(2, 3)

    @staticmethod
    def _unheads(y: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """``[T, B, h, N, d] -> [T, B, C, H, W]``, built token-major (NHWC storage, channel = head * d + lane)."""
        T, B, h, N, d = y.shape
        return y.transpose(2, 3).reshape(T, B, H, W, h * d).permute(0, 1, 4, 2, 3)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Linear spike attention on binary ``[T, B, h, N, d]`` tensors (before attn_lif)."""
        return self.matmul_q(q, self.matmul_kv(k.transpose(-2, -1), v)) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x.shape
        s = self.head_lif(x)
        q = self.q_lif(seq(self.q_conv, s))
        k = self.k_lif(seq(self.k_conv, s))
        v = self.v_lif(seq(self.v_conv, s))
        y = self._unheads(self.attention(self._heads(q), self._heads(k), self._heads(v)), H, W)
        if not is_nhwc(x):
            y = y.contiguous()  # NCHW model: keep NCHW storage (same values)
        return seq(self.proj_conv, self.attn_lif(y))


MS_Attention_RepConv_qkv_id = SpikeLinearAttention  # the official name


class TokenConv1d(nn.Conv1d):
    """``nn.Conv1d`` with kernel 1 (official parameters and keys) that also accepts a token grid ``[N, C, H, W]``.

    On a grid it is the same per-token linear map computed as a 1x1 conv2d, which keeps an NHWC layout (a Conv1d
    on the flattened tokens would return NCL). Its input is binary in V2, so in training it saves that input as
    uint8 (``compact``, like :class:`SpikeConv2d`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.kernel_size != (1,) or self.stride != (1,) or self.padding != (0,) or self.groups != 1:
            raise ValueError("TokenConv1d is a pointwise (kernel 1, stride 1, no padding, 1 group) Conv1d")
        self.compact = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            return super().forward(x)
        return spike_conv2d(x, self.weight.unsqueeze(-1), self.bias, compact=self.compact)


class TokenBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` (official keys) that also accepts a token grid ``[N, C, H, W]``: per-channel statistics
    over N*H*W, exactly those of the official BatchNorm1d over ``[N, C, H*W]``, and the layout is kept."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2D, 3D or 4D input (got {input.dim()}D input)")


class MS_MLP(nn.Module):
    """Token MLP (hidden = mlp_ratio * C): ``fc1_lif -> fc1_conv (Conv1d k=1, bias) -> fc1_bn (BatchNorm1d)
    -> fc2_lif -> fc2_conv -> fc2_bn``. The official code runs the Conv1d/BatchNorm1d on ``[T*B, C, H*W]``; here
    the identical maps run on ``[T*B, C, H, W]`` (see :class:`TokenConv1d`)."""

    def __init__(self, in_features: int, hidden_features: int | None = None):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1_conv = TokenConv1d(in_features, hidden_features, kernel_size=1, stride=1)
        self.fc1_bn = TokenBatchNorm1d(hidden_features)
        self.fc1_lif = LIF()
        self.fc2_conv = TokenConv1d(hidden_features, in_features, kernel_size=1, stride=1)
        self.fc2_bn = TokenBatchNorm1d(in_features)
        self.fc2_lif = LIF()
        self.c_hidden, self.c_output = hidden_features, in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = seq(self.fc1_bn, seq(self.fc1_conv, self.fc1_lif(x)))
        return seq(self.fc2_bn, seq(self.fc2_conv, self.fc2_lif(x)))


class MS_Block(nn.Module):
    """Transformer block: ``x = x + attn(x)``, then ``x = x + mlp(x)`` (membrane shortcuts).

    ``drop_path``: stochastic depth on both branches (one decision per sample, shared over T). The official code
    builds a DropPath module but never calls it; 0.0 (the default) is the official behaviour.
    """

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 4, drop_path: float = 0.0):
        super().__init__()
        self.attn = SpikeLinearAttention(dim, num_heads)
        self.mlp = MS_MLP(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(x), self.drop_path, self.training)
        return x + drop_path(self.mlp(x), self.drop_path, self.training)

    def extra_repr(self) -> str:
        return f"drop_path={self.drop_path:g}"


class MS_DownSampling(nn.Module):
    """``encode_lif`` (absent in the first layer, which sees the image) -> ``encode_conv`` (with bias) -> ``encode_bn``."""

    def __init__(self, in_channels: int, embed_dims: int, kernel_size: int = 3, stride: int = 2, padding: int = 1,
                 first_layer: bool = False):
        super().__init__()
        self.encode_lif = None if first_layer else LIF()
        conv = nn.Conv2d if first_layer else SpikeConv2d  # after a LIF the input is binary
        self.encode_conv = conv(in_channels, embed_dims, kernel_size, stride, padding)
        self.encode_bn = nn.BatchNorm2d(embed_dims)
        self.channels_last = False  # first layer: force NHWC output (a 1-channel NHWC image is also NCHW)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.encode_lif is not None:
            x = self.encode_lif(x)
        x = seq(self.encode_conv, x)
        if self.channels_last:
            x = nhwc(x)
        return seq(self.encode_bn, x)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class MetaSpikeFormer(nn.Module):
    """Spike-driven Transformer V2 (Meta-SpikeFormer). ``model(x)`` returns logits ``[B, K]``.

    Args:
        img_size: nominal input side; any H, W divisible by the total stride (product of downsample_strides) run.
        in_channels: 3 for RGB, 2 for DVS polarity frames, 1 for grey images.
        num_classes: K; 0 gives a feature extractor (head = Identity).
        embed_dim: (D0, D1, D2, D3), the widths of the 4 stages; D0 must be even (stem width D0/2) and D2, D3
            divisible by num_heads. Official: 8_384 = (96, 192, 384, 480), 8_512 = (128, 256, 512, 640) (the
            default), 8_768 = (192, 384, 768, 960).
        num_heads: attention heads of stages 3-4 (official 8).
        mlp_ratio: expansion of the conv blocks (conv1) and of the token MLPs (official 4).
        T: time steps (an attribute, settable later as in the official code: ``model.T = 4``); static images are
            repeated T times, event input ``[B, T, C, H, W]`` must bring exactly T frames.
        kd: add ``head_kd`` for distillation: training mode returns ``(head(x), head_kd(x))``, eval their mean.
        drop_path_rate: stochastic depth of the 8 transformer blocks, linear from 0 to this value over
            block3.0 .. block4.1. The official code builds DropPath but never applies it; here it is applied,
            so the default 0.0 is the official behaviour (as in our V1 model).
        lif_backend: neuron implementation, "auto" | "torch" | "cpp" | "triton" (None: env or "auto"); float64
            always runs the reference loop.
        channels_last: NHWC activation storage (same results; an execution option, not in the state_dict).
        compact_spikes: convs whose input is binary save it for backward as uint8 (lossless).
        downsample_strides: strides of (downsample1_1, downsample1_2, downsample2, downsample3, downsample4);
            official (2, 2, 2, 2, 1), i.e. total stride 16: a 224-px image gives 56/28/14/14 tokens per side in
            stages 1/2/3/4. Kernel sizes and paddings stay as official (7x7 pad 3, 3x3 pad 1), so parameter
            names and shapes do not change; only the token grids (and the compute) grow. Not an official option:
            name it as a difference when used. Why it exists: with few tokens in stages 3-4, ``attn_lif`` never
            fires at initialisation (it needs Q.(K^T V) * 0.125 >= 1, i.e. >= 8 coincidences among sparse
            spikes), so every ``proj_conv`` sees an all-zero input and its three BatchNorms a zero batch
            variance, each multiplying the gradient by 1/sqrt(eps) ~ 316. Measured here at initialisation (dims
            32/64/128/160, batch 16, T=1, 1 channel): 32 px with the official strides (2x2 tokens) and 28 px
            with (1, 1, 2, 2, 1) (7x7 tokens): every attn_lif silent, max |grad| of the first conv 1e31-1e37;
            28 px with (1, 1, 1, 2, 1) (14x14 tokens, as on ImageNet): attn_lif fires (0.1-6%), first-conv
            gradient 0.025 against 0.056 at the head. So keep stages 3-4 near 14x14 tokens.
    """

    family = "sdt_v2"

    def __init__(
        self,
        img_size: int = 224,
        in_channels: int = 3,
        num_classes: int = 1000,
        embed_dim: Sequence[int] = (128, 256, 512, 640),
        num_heads: int = 8,
        mlp_ratio: float = 4,
        T: int = 1,
        kd: bool = False,
        drop_path_rate: float = 0.0,
        lif_backend: str | None = None,
        channels_last: bool = True,
        compact_spikes: bool = True,
        downsample_strides: Sequence[int] = OFFICIAL_STRIDES,
    ):
        super().__init__()
        _check_config(img_size, in_channels, num_classes, embed_dim, num_heads, mlp_ratio, T, kd, drop_path_rate,
                      downsample_strides)
        d0, d1, d2, d3 = (int(d) for d in embed_dim)
        s = tuple(int(v) for v in downsample_strides)
        self.img_size, self.in_channels, self.num_classes = img_size, in_channels, num_classes
        self.embed_dim, self.num_heads, self.mlp_ratio = (d0, d1, d2, d3), num_heads, mlp_ratio
        self.T, self.kd, self.drop_path_rate, self.downsample_strides = T, bool(kd), drop_path_rate, s
        self.total_stride = math.prod(s)
        self.num_features = d3

        self.downsample1_1 = MS_DownSampling(in_channels, d0 // 2, 7, s[0], 3, first_layer=True)
        self.ConvBlock1_1 = nn.ModuleList([MS_ConvBlock(d0 // 2, mlp_ratio)])
        self.downsample1_2 = MS_DownSampling(d0 // 2, d0, 3, s[1], 1)
        self.ConvBlock1_2 = nn.ModuleList([MS_ConvBlock(d0, mlp_ratio)])
        self.downsample2 = MS_DownSampling(d0, d1, 3, s[2], 1)
        self.ConvBlock2_1 = nn.ModuleList([MS_ConvBlock(d1, mlp_ratio)])
        self.ConvBlock2_2 = nn.ModuleList([MS_ConvBlock(d1, mlp_ratio)])
        dpr = [drop_path_rate * j / 7 for j in range(8)]  # linspace(0, rate, 8)
        self.downsample3 = MS_DownSampling(d1, d2, 3, s[3], 1)
        self.block3 = nn.ModuleList([MS_Block(d2, num_heads, mlp_ratio, dpr[j]) for j in range(6)])
        self.downsample4 = MS_DownSampling(d2, d3, 3, s[4], 1)
        self.block4 = nn.ModuleList([MS_Block(d3, num_heads, mlp_ratio, dpr[6 + j]) for j in range(2)])
        self.lif = LIF()
        self.head = nn.Linear(d3, num_classes) if num_classes > 0 else nn.Identity()
        if self.kd:
            self.head_kd = nn.Linear(d3, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        self.set_execution(lif_backend=lif_backend, channels_last=channels_last, compact_spikes=compact_spikes)

    # ------------------------------------------------------------------ execution options
    def set_execution(self, lif_backend: str | None = None, channels_last: bool | None = None,
                      compact_spikes: bool | None = None) -> "MetaSpikeFormer":
        """Switch the fast paths (None leaves a setting unchanged); none of them changes results or weights.

        lif_backend: "auto" | "torch" | "cpp" | "triton". channels_last: NHWC activation storage.
        compact_spikes: binary-input convs save their input as uint8 for backward.
        """
        if lif_backend is not None:
            set_backend(self, lif_backend)
        if channels_last is not None:
            self.channels_last = channels_last
            conv_weights_layout(self, bool(channels_last))
        if compact_spikes is not None:
            for m in self.modules():
                if isinstance(m, (SpikeConv2d, TokenConv1d)):
                    m.compact = bool(compact_spikes) and getattr(m, "_compact_allowed", True)
        return self

    def set_lif_backend(self, backend: str) -> "MetaSpikeFormer":
        return self.set_execution(lif_backend=backend)

    @property
    def channels_last(self) -> bool:
        return self.downsample1_1.channels_last

    @channels_last.setter
    def channels_last(self, value: bool) -> None:
        self.downsample1_1.channels_last = bool(value)

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups in depth order for timm's layer-wise lr decay: the stem, each stage's downsampling and
        blocks in turn, then the heads (unmatched: the last group). The official mapping
        (``util/lr_decay_spikformer.py``) looks for ``cls_token``/``pos_embed``/``patch_embed``, which V2 does not
        have, so every parameter lands in one group there: with the official layer_decay of 1.0 both are no-ops."""
        return stage_groups()

    def get_classifier(self):
        """The head Linear, or ``(head, head_kd)`` when built with kd=True."""
        return (self.head, self.head_kd) if self.kd else self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (and head_kd) by fresh ones for ``num_classes`` (0: Identity); init as official."""
        if not (isinstance(num_classes, int) and num_classes >= 0):
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        ref = next(self.parameters())
        self.num_classes = num_classes

        def new_head():
            if num_classes == 0:
                return nn.Identity()
            lin = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            _init_weights(lin)
            return lin

        self.head = new_head()
        if self.kd:
            self.head_kd = new_head()

    def fuse(self) -> "MetaSpikeFormer":
        """In place: switch to eval mode and fold every attention RepConv + BN into one conv (see fold_repconv)."""
        return fold_repconv(self, inplace=True)

    @staticmethod
    def config_name(model) -> str:
        """A name for a configuration that is not a registered one."""
        return "sdt_v2_" + "_".join(map(str, model.embed_dim))

    def arch_summary(self) -> str:
        return (f"dims {'/'.join(map(str, self.embed_dim))}, T={self.T}, img={self.img_size}, in={self.in_channels}, "
                f"classes={self.num_classes}, strides {''.join(map(str, self.downsample_strides))}"
                + (", kd" if self.kd else ""))

    # ------------------------------------------------------------------ input
    def to_time_major(self, x: torch.Tensor) -> torch.Tensor:
        """Validate the input and return ``[T, B, C, H, W]`` (static images repeated T times)."""
        return time_major_input(x, self.T, self.in_channels, self.total_stride, self.channels_last,
                                f"the total stride of downsample_strides={self.downsample_strides}",
                                dtype=self.downsample1_1.encode_conv.weight.dtype)

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> token-mean membrane features ``[T, B, D3]`` (before the head LIF)."""
        x = run_stages(self, self.to_time_major(x))
        return token_mean(x, nhwc_grad=self.channels_last)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False):
        """``[T, B, D3]`` features -> LIF -> head, mean over T. kd: (head, head_kd) in training, their mean in eval.
        ``pre_logits``: the head spikes ``[T, B, D3]``."""
        s = self.lif(feats)
        if pre_logits:
            return s
        out = self.head(s).mean(0)
        if not self.kd:
            return out
        out_kd = self.head_kd(s).mean(0)
        return (out, out_kd) if self.training else (out + out_kd) / 2

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))

    def extra_repr(self) -> str:
        return (f"T={self.T}, embed_dim={self.embed_dim}, num_heads={self.num_heads}, kd={self.kd}, "
                f"downsample_strides={self.downsample_strides}")


Spiking_vit_MetaFormer = MetaSpikeFormer  # the official class name


# The stage layout V2 and V3 share: the modules forward_features runs, in order (ModuleLists block by block).
STAGE_ORDER = ("downsample1_1", "ConvBlock1_1", "downsample1_2", "ConvBlock1_2", "downsample2", "ConvBlock2_1",
               "ConvBlock2_2", "downsample3", "block3", "downsample4", "block4")


def run_stages(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the stages of a V2/V3 model on ``x`` in :data:`STAGE_ORDER`."""
    for name in STAGE_ORDER:
        stage = getattr(model, name)
        for blk in (stage if isinstance(stage, nn.ModuleList) else (stage,)):
            x = blk(x)
    return x


def stage_groups() -> dict:
    """timm group_matcher of the stage layout: one group per stage module (per block in the ModuleLists)."""
    return {name: (rf"^{name}\.(\d+)\." if name.startswith(("ConvBlock", "block")) else rf"^{name}\.")
            for name in STAGE_ORDER}


def _check_config(img_size, in_channels, num_classes, embed_dim, num_heads, mlp_ratio, T, kd, drop_path_rate,
                  downsample_strides):
    def need(cond, msg):
        if not cond:
            raise ValueError(msg)

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    need(isinstance(embed_dim, Sequence) and len(embed_dim) == 4 and all(is_int(d) and d > 0 for d in embed_dim),
         f"embed_dim must be 4 positive ints (D0, D1, D2, D3), one per stage, got {embed_dim!r}")
    d0, d1, d2, d3 = embed_dim
    need(d0 % 2 == 0, f"embed_dim[0] (D0) must be even (the first stage starts at D0/2 channels), got {d0}")
    need(is_int(num_heads) and num_heads > 0, f"num_heads must be a positive int, got {num_heads!r}")
    for i, d in ((2, d2), (3, d3)):
        need(d % num_heads == 0, f"embed_dim[{i}] ({d}) must be divisible by num_heads ({num_heads}): "
                                 f"stages 3-4 split channels into heads")
    need(isinstance(mlp_ratio, (int, float)) and mlp_ratio > 0 and int(d0 // 2 * mlp_ratio) >= 1,
         f"mlp_ratio must be > 0, got {mlp_ratio!r}")
    need(is_int(T) and T >= 1, f"T (time steps) must be an int >= 1, got {T!r}")
    need(is_int(in_channels) and in_channels >= 1, f"in_channels must be an int >= 1, got {in_channels!r}")
    need(is_int(num_classes) and num_classes >= 0, f"num_classes must be an int >= 0, got {num_classes!r}")
    need(isinstance(kd, bool), f"kd must be True or False, got {kd!r}")
    need(isinstance(drop_path_rate, (int, float)) and 0.0 <= drop_path_rate < 1.0,
         f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
    need(isinstance(downsample_strides, Sequence) and len(downsample_strides) == 5
         and all(is_int(v) and v >= 1 for v in downsample_strides),
         f"downsample_strides must be 5 ints >= 1 (downsample1_1, 1_2, 2, 3, 4; official (2, 2, 2, 2, 1)), "
         f"got {downsample_strides!r}")
    f = math.prod(downsample_strides)
    need(is_int(img_size) and img_size > 0 and img_size % f == 0,
         f"img_size must be a positive int divisible by the total stride {f} of downsample_strides="
         f"{tuple(downsample_strides)}, got {img_size!r}")


def _init_weights(m: nn.Module) -> None:
    # Official: Linear weight trunc-normal(std .02) with bias 0; convs keep PyTorch's default init; BN (1, 0).
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------
# Inference form
# --------------------------------------------------------------------------------------------------
def fold_repconv(model: nn.Module, inplace: bool = False, form: str = "dense") -> nn.Module:
    """Eval-mode model whose attention q/k/v/proj ``Sequential(RepConv, BatchNorm2d)`` are single 3x3 convs.

    Each becomes a :class:`SpikeConv2d` (padding 1, with bias) reading the binary spikes directly, equal in eval
    mode to the unfolded branch up to float rounding (the fold is computed in float64). Inference only: the
    folded model has no BN left in these branches, so training it is not the V2 model any more; its state_dict
    has ``q_conv.weight``/``q_conv.bias`` instead of the RepConv keys. Returns a copy unless ``inplace``.
    (``spikedriven.inference.prepare_inference`` also folds every conv + BatchNorm pair.)
    ``form="auto"``: each branch instead keeps the dense conv and the 1x1 -> depthwise 3x3 -> 1x1 chain and runs,
    per input size, the one with fewer multiply-accumulates (the dense evaluation form, not spike-driven; see
    ``spikedriven.layers.repconv.RepConvEval``); ``"chain"`` always runs the chain.
    """
    if not inplace:
        model = copy.deepcopy(model)
    return fold_reparam(model.eval(), form)


# --------------------------------------------------------------------------------------------------
# Official zoo (BICLab/Spike-Driven-Transformer-V2 classification/models.py: metaspikformer_8_*)
# --------------------------------------------------------------------------------------------------
_IMAGENET = dict(img_size=224, in_channels=3, num_classes=1000, num_heads=8, mlp_ratio=4)
OFFICIAL_CONFIGS = {
    "sdt_v2_8_384": dict(embed_dim=(96, 192, 384, 480), **_IMAGENET),
    "sdt_v2_8_512": dict(embed_dim=(128, 256, 512, 640), **_IMAGENET),
    "sdt_v2_8_768": dict(embed_dim=(192, 384, 768, 960), **_IMAGENET),
}
# Parameter counts of the official model (spec v2-reference.md §3), without and with head_kd.
OFFICIAL_PARAMS = {"sdt_v2_8_384": 31_333_864, "sdt_v2_8_512": 55_350_248, "sdt_v2_8_768": 123_741_160}
OFFICIAL_PARAMS_KD = {"sdt_v2_8_384": 31_814_864, "sdt_v2_8_512": 55_991_248, "sdt_v2_8_768": 124_702_160}
# state_dict entries (parameters and BN buffers incl. num_batches_tracked), kd=False
OFFICIAL_STATE_DICT_LEN = {"sdt_v2_8_512": 825}


register_family(ModelFamily(
    "sdt_v2", MetaSpikeFormer, "Spike-driven Transformer V2 (Meta-SpikeFormer)",
    paper="Yao et al., Spike-driven Transformer V2: Meta Spiking Neural Network Architecture Inspiring the Design "
          "of Next-generation Neuromorphic Chips, ICLR 2024 (arXiv 2404.03663)",
    official_code="https://github.com/BICLab/Spike-Driven-Transformer-V2", first_conv="downsample1_1.encode_conv",
    classifier=("head", "head_kd")))

_V2_NOTES = {
    "sdt_v2_8_384": "official metaspikformer_8_384 (31.3M); T=1 as built by the official code (fine-tune with T=4)",
    "sdt_v2_8_512": "official metaspikformer_8_512 (55.4M); the released checkpoint is 80.0% top-1 at T=4 with kd",
    "sdt_v2_8_768": "official metaspikformer_8_768 (123.7M); T=1 as built by the official code",
}
for _name, _kw in OFFICIAL_CONFIGS.items():
    register_model(ModelInfo(
        _name, dict(_kw), "imagenet", "classification/models.py: metaspikformer_" + _name[len("sdt_v2_"):],
        OFFICIAL_PARAMS[_name], 80.0 if _name == "sdt_v2_8_512" else None, notes=_V2_NOTES[_name],
        recipe="imagenet_v2_" + _name[len("sdt_v2_"):], extra={"crop_pct": 0.875, "interpolation": "bicubic", "params_kd": OFFICIAL_PARAMS_KD[_name]},
        family="sdt_v2"))

# Ours: small Meta-SpikeFormers sized for a 2-core CPU (no official counterpart; params are our own counts). The
# official strides would leave 1-2 tokens per side on these images, where attn_lif stays silent and training
# diverges (see MetaSpikeFormer's downsample_strides): the strides keep stages 3-4 at 7x7 or 8x8 tokens, and two
# heads keep each head's K^T V wide enough for attn_lif to fire.
_SMALL_V2 = [
    # name, dataset, embed_dim, strides, img, in_channels, T, params, recipe, notes
    ("sdt_v2_digits_8_64", "digits", (16, 32, 64, 80), (1, 1, 2, 1, 1), 16, 1, 1, 900_890, "digits_v2",
     "V2's main job: sklearn digits (16 px, 8x8 tokens in stages 3-4)"),
    ("sdt_v2_fmnist_8_64", "fashion-mnist", (16, 32, 64, 80), (2, 1, 2, 1, 1), 28, 1, 1, 900_890,
     "fashion_mnist_v2", "Fashion-MNIST in a 45-minute CPU budget (7x7 tokens in stages 3-4)"),
    ("sdt_v2_cifar10_8_128", "cifar10", (32, 64, 128, 160), (1, 1, 2, 2, 1), 32, 3, 4, 3_499_850, "cifar10_v2",
     "CIFAR-10 (8x8 tokens in stages 3-4), T=4 as the V1 CIFAR models"),
]
for _name, _ds, _dims, _strides, _img, _cin, _T, _params, _recipe, _notes in _SMALL_V2:
    register_model(ModelInfo(
        _name, dict(img_size=_img, in_channels=_cin, num_classes=10, embed_dim=_dims, num_heads=2, mlp_ratio=4, T=_T,
                    downsample_strides=_strides),
        _ds, None, _params, None, notes=_notes, recipe=_recipe, family="sdt_v2"))
