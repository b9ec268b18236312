"""Spike-driven Transformer V3 / E-SpikeFormer (Yao et al., TPAMI 2025), faithful to the official base models.

    x [B, C, H, W]
      stage 1  downsample1_1 (7x7/2 conv on the image, D0/2)      -> ConvBlock1_1
               downsample1_2 (spike, 3x3/2 conv, D0)              -> ConvBlock1_2
      stage 2  downsample2   (spike, 3x3/2 conv, D1)              -> ConvBlock2_1 -> ConvBlock2_2
      stage 3  downsample3   (spike, 3x3/2 conv, D2)              -> block3.0 .. block3.5
      stage 4  downsample4   (spike, 3x3/1 conv, D3)              -> block4.0 .. block4.1
      -> mean over tokens -> spike (norm 1: integers 0..D) -> Linear head

Every "spike" is V3's integer neuron (:class:`~spikedriven.neuron.IntegerNeuron`, ``round(clamp(x, 0, D)) / D``):
training runs at one time step with integer activations 0..D. Residuals are membrane shortcuts: each branch
starts with a neuron, so every conv/linear input is an integer activation except the first conv (the image).
Module and parameter names are the official ones (``Spiking_vit_MetaFormer_Spike_SepConv`` in
BICLab/Spike-Driven-Transformer-V3 ``SDT_V3/Classification/Model_Base/models.py``): official checkpoints load with
``strict=True``. Tensors are ``[B, C, H, W]`` as in the official code (one real time step; ``T`` is 1).

Spike-driven form (:func:`spike_driven_form`): BatchNorms folded, each neuron emits its integer as D binary spikes
over D virtual steps, and each conv/linear after the first runs on those binary spikes and sums its D outputs
(:class:`VirtualSteps`), so every synaptic input but the image is binary and the logits are the integer model's
(float64: to rounding; the integers themselves are identical).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from ..inference import fold_bn
from ..layers.attention import Attention, register_attention
from ..layers.ops import SpikeMatmul, conv_weights_layout, drop_path, time_major_input
from ..neuron import IntegerNeuron, set_backend
from .registry import ModelFamily, ModelInfo, register_family, register_model
from .sdt_v2 import _check_config as _check_stage_config
from .sdt_v2 import _init_weights, run_stages, stage_groups

__all__ = ["ESpikeFormer", "Spiking_vit_MetaFormer_Spike_SepConv", "SepConv_Spike", "MS_ConvBlock_spike_SepConv",
           "IntegerLinearAttention", "MS_Attention_linear", "MS_MLP", "MS_Block_Spike_SepConv", "MS_DownSampling",
           "VirtualSteps", "spike_driven_form", "OFFICIAL_CONFIGS", "OFFICIAL_PARAMS", "OFFICIAL_STRIDES"]

OFFICIAL_STRIDES = (2, 2, 2, 2, 1)  # downsample1_1, downsample1_2, downsample2, downsample3, downsample4


def _spike(D: int) -> IntegerNeuron:
    return IntegerNeuron(D)


# --------------------------------------------------------------------------------------------------
# Conv stages (1 and 2)
# --------------------------------------------------------------------------------------------------
class SepConv_Spike(nn.Module):
    """Inverted separable conv with a neuron before every conv (official ``SepConv_Spike``):

    spike1 -> pwconv1 (1x1 C->2C + BN) -> spike2 -> dwconv (depthwise k x k + BN) -> spike3 -> pwconv2 (1x1 + BN).
    Unlike V2's SepConv, the depthwise conv's output is quantised before pwconv2, so all three convs read spikes.
    """

    def __init__(self, dim: int, D: int = 4, expansion_ratio: int = 2, kernel_size: int = 7, padding: int = 3):
        super().__init__()
        med = int(expansion_ratio * dim)
        self.spike1 = _spike(D)
        self.pwconv1 = nn.Sequential(nn.Conv2d(dim, med, 1, 1, bias=False), nn.BatchNorm2d(med))
        self.spike2 = _spike(D)
        self.dwconv = nn.Sequential(nn.Conv2d(med, med, kernel_size, padding=padding, groups=med, bias=False),
                                    nn.BatchNorm2d(med))
        self.spike3 = _spike(D)
        self.pwconv2 = nn.Sequential(nn.Conv2d(med, dim, 1, 1, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pwconv1(self.spike1(x))
        x = self.dwconv(self.spike2(x))
        return self.pwconv2(self.spike3(x))


class MS_ConvBlock_spike_SepConv(nn.Module):
    """Conv block of stages 1-2: ``x = x + SepConv(x)``, then ``x + bn2(conv2(spike2(bn1(conv1(spike1(x))))))``
    with 3x3 convs C -> mlp_ratio*C -> C (no bias)."""

    def __init__(self, dim: int, mlp_ratio: float = 4, D: int = 4):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.Conv = SepConv_Spike(dim, D)
        self.spike1 = _spike(D)
        self.conv1 = nn.Conv2d(dim, hidden, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.spike2 = _spike(D)
        self.conv2 = nn.Conv2d(hidden, dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv(x) + x
        y = self.bn1(self.conv1(self.spike1(x)))
        return x + self.bn2(self.conv2(self.spike2(y)))


# --------------------------------------------------------------------------------------------------
# Transformer stages (3 and 4)
# --------------------------------------------------------------------------------------------------
class SpikeColMatmul(SpikeMatmul):
    """``a @ b`` with ``b`` binary: each 1 in a column of ``b`` adds one column of ``a`` (which may hold integer
    counts), so the product is additions, no multiplication (V3's (Q Kᵀ) V in the spike-driven form)."""

    integer_operand = 0


@register_attention
class IntegerLinearAttention(Attention):
    """V3 attention (official ``MS_Attention_linear``, lamda_ratio 4), dim C, h heads, d = C/h, value width 4C:

        S = head_spike(x)
        Q, K = q_spike(BN(Conv1x1(S))), k_spike(...)              [B, h, N, d], values v/D
        V = v_spike(BN(Conv1x1_{C->4C}(S)))                        [B, h, N, 4d]
        Y = attn_spike( (Q Kᵀ) V * 2 / sqrt(d) )                   quantised to 0..D
        out = BN(Conv1x1_{4C->C}(Y))                               no neuron: the block adds it to its input

    Despite the official name, Q Kᵀ ([N, N]) comes first, so the cost is quadratic in tokens; kept as official.
    In the spike-driven form Q, K and V are D binary steps each: Q Kᵀ is a sum of D x D binary products
    (coincidence counts), and multiplying those counts by the binary steps of V adds columns of counts; the
    result is the same integer (Q Kᵀ V) exactly, scaled by 2 / (sqrt(d) D^3).
    """

    name = "integer_linear"
    layout = "sdt_v3"
    spike_driven = True
    output = "binary"
    operator_ops = ("additions: in the spike-driven form Q Kᵀ counts coincidences of binary spikes over D x D "
                    "virtual-step pairs, and (Q Kᵀ) V adds columns of those counts selected by the spikes of V")
    formula = "SN((Q Kᵀ) V · 2/√d)"

    def __init__(self, dim: int, num_heads: int = 8, lamda_ratio: int = 4, D: int = 4):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads, self.lamda_ratio = dim, num_heads, lamda_ratio
        self.scale = (dim // num_heads) ** -0.5
        cv = int(dim * lamda_ratio)
        self.head_spike = _spike(D)
        self.q_conv = nn.Sequential(nn.Conv2d(dim, dim, 1, 1, bias=False), nn.BatchNorm2d(dim))
        self.q_spike = _spike(D)
        self.k_conv = nn.Sequential(nn.Conv2d(dim, dim, 1, 1, bias=False), nn.BatchNorm2d(dim))
        self.k_spike = _spike(D)
        self.v_conv = nn.Sequential(nn.Conv2d(dim, cv, 1, 1, bias=False), nn.BatchNorm2d(cv))
        self.v_spike = _spike(D)
        self.attn_spike = _spike(D)
        self.proj_conv = nn.Sequential(nn.Conv2d(cv, dim, 1, 1, bias=False), nn.BatchNorm2d(dim))
        self.matmul_qk = SpikeMatmul()  # spike-driven form: binary x binary -> coincidence counts
        self.matmul_v = SpikeColMatmul()  # counts x binary -> additions of count columns

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, h, N, C/h]`` (channel = head * C/h + lane, as official)."""
        B, C = x.shape[:2]
        return x.flatten(2).transpose(-1, -2).reshape(B, -1, self.num_heads, C // self.num_heads).transpose(1, 2)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(Q Kᵀ) V * 2 scale`` on head-split ``[B, h, N, d]`` activations (integer form)."""
        return (q @ k.transpose(-2, -1)) @ v * (self.scale * 2)

    def attention_spikes(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, D: int, norm: float):
        """The same on binary virtual steps ``[D, B, h, N, d]``: integer counts from binary products only."""
        counts = self.matmul_qk(q.unsqueeze(1), k.unsqueeze(0).transpose(-2, -1)).sum((0, 1))  # Q_int K_intᵀ
        total = self.matmul_v(counts.unsqueeze(0), v).sum(0)  # Q_int K_intᵀ V_int
        return total / norm ** 3 * (self.scale * 2)  # powers of two: exactly the integer form's (q kᵀ) v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        s = self.head_spike(x)
        q = self.q_spike(self.q_conv(s))
        k = self.k_spike(self.k_conv(s))
        v = self.v_spike(self.v_conv(s))
        if self.q_spike.expand:
            D, norm = self.q_spike.D, self.q_spike.norm
            q, k, v = (self._heads(t).unflatten(0, (D, B)) for t in (q, k, v))
            y = self.attention_spikes(q, k, v, D, norm)
        else:
            y = self.attention(self._heads(q), self._heads(k), self._heads(v))
        y = y.transpose(2, 3).reshape(B, -1, H * W).reshape(B, -1, H, W)  # [B, h, N, dv] -> [B, Cv, H, W]
        return self.proj_conv(self.attn_spike(y))


MS_Attention_linear = IntegerLinearAttention  # the official name


class MS_MLP(nn.Module):
    """Token MLP on ``[B, C, N]`` (official): fc1_spike -> fc1_conv (Conv1d k1, bias) -> fc1_bn -> fc2_spike ->
    fc2_conv -> fc2_bn."""

    def __init__(self, in_features: int, hidden_features: int | None = None, D: int = 4):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1_conv = nn.Conv1d(in_features, hidden_features, kernel_size=1, stride=1)
        self.fc1_bn = nn.BatchNorm1d(hidden_features)
        self.fc1_spike = _spike(D)
        self.fc2_conv = nn.Conv1d(hidden_features, in_features, kernel_size=1, stride=1)
        self.fc2_bn = nn.BatchNorm1d(in_features)
        self.fc2_spike = _spike(D)
        self.c_hidden, self.c_output = hidden_features, in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        x = self.fc1_bn(self.fc1_conv(self.fc1_spike(x.flatten(2))))
        return self.fc2_bn(self.fc2_conv(self.fc2_spike(x))).reshape(B, C, H, W)


class MS_Block_Spike_SepConv(nn.Module):
    """Transformer block: ``x + conv(x)`` (SepConv_Spike 3x3), ``x + attn(x)``, ``x + mlp(x)``.

    ``drop_path``: stochastic depth on the three branches (one decision per sample). The official code builds a
    DropPath module but never calls it; the default 0.0 is the official behaviour.
    """

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 4, drop_path: float = 0.0, D: int = 4):
        super().__init__()
        self.conv = SepConv_Spike(dim, D, kernel_size=3, padding=1)
        self.attn = IntegerLinearAttention(dim, num_heads, lamda_ratio=4, D=D)
        self.mlp = MS_MLP(dim, int(dim * mlp_ratio), D)
        self.drop_path = drop_path

    def _branch(self, y: torch.Tensor) -> torch.Tensor:
        return drop_path(y.unsqueeze(0), self.drop_path, self.training)[0] if self.drop_path else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._branch(self.conv(x))
        x = x + self._branch(self.attn(x))
        return x + self._branch(self.mlp(x))

    def extra_repr(self) -> str:
        return f"drop_path={self.drop_path:g}"


class MS_DownSampling(nn.Module):
    """``encode_spike`` (absent in the first layer, which sees the image) -> ``encode_conv`` (bias) -> ``encode_bn``."""

    def __init__(self, in_channels: int, embed_dims: int, kernel_size: int = 3, stride: int = 2, padding: int = 1,
                 first_layer: bool = False, D: int = 4):
        super().__init__()
        self.encode_conv = nn.Conv2d(in_channels, embed_dims, kernel_size, stride, padding)
        self.encode_bn = nn.BatchNorm2d(embed_dims)
        self.first_layer = first_layer
        if not first_layer:
            self.encode_spike = _spike(D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.first_layer:
            x = self.encode_spike(x)
        return self.encode_bn(self.encode_conv(x))


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
class ESpikeFormer(nn.Module):
    """Spike-driven Transformer V3 (E-SpikeFormer, base models). ``model(x)`` returns logits ``[B, K]``.

    Args:
        img_size: nominal input side; any H, W divisible by the total stride run.
        in_channels: 3 for RGB, 1 for grey images.
        num_classes: K; 0 gives a feature extractor (head = Identity).
        embed_dim: (D0, D1, D2, D3), stage widths; D0 even, D2 and D3 divisible by num_heads. Official:
            t = (24, 48, 96, 128), s = (32, 64, 128, 192), m = (48, 96, 192, 240), l = (64, 128, 256, 360).
        num_heads: attention heads of stages 3-4 (official 8).
        mlp_ratio: expansion of the conv blocks and token MLPs (official 4).
        D: the integer neuron's largest value = virtual time steps of the spike-driven form (official 4; 1 gives
            binary spikes at one step, 8 finer activations).
        drop_path_rate: stochastic depth over the 8 transformer blocks, linear from 0 (official: built, never
            applied; 0.0 is the official behaviour).
        downsample_strides: strides of (downsample1_1, 1_2, 2, 3, 4); official (2, 2, 2, 2, 1). Not an official
            option: small images keep more tokens with smaller strides (same parameters).
        neuron_backend: "auto" | "torch" (the official autograd formulation; same values and gradients).
        channels_last: NHWC activation storage for the convs (default on: 1.1-1.3x faster training on CPU; same
            values up to float rounding; not in the state_dict).
    """

    family = "sdt_v3"

    def __init__(
        self,
        img_size: int = 224,
        in_channels: int = 3,
        num_classes: int = 1000,
        embed_dim: Sequence[int] = (48, 96, 192, 240),
        num_heads: int = 8,
        mlp_ratio: float = 4,
        D: int = 4,
        drop_path_rate: float = 0.0,
        downsample_strides: Sequence[int] = OFFICIAL_STRIDES,
        neuron_backend: str | None = None,
        channels_last: bool = True,
    ):
        super().__init__()
        _check_config(img_size, in_channels, num_classes, embed_dim, num_heads, mlp_ratio, D, drop_path_rate,
                      downsample_strides)
        d0, d1, d2, d3 = (int(d) for d in embed_dim)
        s = tuple(int(v) for v in downsample_strides)
        self.img_size, self.in_channels, self.num_classes = img_size, in_channels, num_classes
        self.embed_dim, self.num_heads, self.mlp_ratio, self.D = (d0, d1, d2, d3), num_heads, mlp_ratio, D
        self.drop_path_rate, self.downsample_strides = drop_path_rate, s
        self.T = 1  # one real time step (the tools read it); the spike-driven form adds D virtual steps
        self.total_stride = math.prod(s)
        self.num_features = d3
        m = int(mlp_ratio) if float(mlp_ratio).is_integer() else mlp_ratio

        self.downsample1_1 = MS_DownSampling(in_channels, d0 // 2, 7, s[0], 3, first_layer=True, D=D)
        self.ConvBlock1_1 = nn.ModuleList([MS_ConvBlock_spike_SepConv(d0 // 2, m, D)])
        self.downsample1_2 = MS_DownSampling(d0 // 2, d0, 3, s[1], 1, D=D)
        self.ConvBlock1_2 = nn.ModuleList([MS_ConvBlock_spike_SepConv(d0, m, D)])
        self.downsample2 = MS_DownSampling(d0, d1, 3, s[2], 1, D=D)
        self.ConvBlock2_1 = nn.ModuleList([MS_ConvBlock_spike_SepConv(d1, m, D)])
        self.ConvBlock2_2 = nn.ModuleList([MS_ConvBlock_spike_SepConv(d1, m, D)])
        dpr = [drop_path_rate * j / 7 for j in range(8)]
        self.downsample3 = MS_DownSampling(d1, d2, 3, s[3], 1, D=D)
        self.block3 = nn.ModuleList([MS_Block_Spike_SepConv(d2, num_heads, m, dpr[j], D) for j in range(6)])
        self.downsample4 = MS_DownSampling(d2, d3, 3, s[4], 1, D=D)
        self.block4 = nn.ModuleList([MS_Block_Spike_SepConv(d3, num_heads, m, dpr[6 + j], D) for j in range(2)])
        self.head = nn.Linear(d3, num_classes) if num_classes > 0 else nn.Identity()
        self.spike = IntegerNeuron(D, norm=1)
        self.apply(_init_weights)
        self.set_execution(channels_last=channels_last)
        if neuron_backend is not None:
            set_backend(self, neuron_backend)

    # ------------------------------------------------------------------ execution options
    def set_execution(self, lif_backend: str | None = None, channels_last: bool | None = None,
                      compact_spikes: bool | None = None) -> "ESpikeFormer":
        """Switch execution options (None leaves one unchanged); none changes results or weights.
        ``lif_backend``: the neurons' backend (the name is shared with V1/V2); ``compact_spikes`` has no V3 effect
        (the integer neuron already saves a 1-byte mask for backward)."""
        if lif_backend is not None:
            set_backend(self, lif_backend)
        if channels_last is not None:
            self.channels_last = bool(channels_last)
            conv_weights_layout(self, self.channels_last)
        return self

    def expand_spikes(self, inplace: bool = False) -> "ESpikeFormer":
        """The spike-driven form (see :func:`spike_driven_form`): binary spikes over D virtual steps."""
        return spike_driven_form(self, inplace=inplace)

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups in depth order (timm layer-wise lr decay): stem, stages, then the head."""
        return stage_groups()

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a fresh one for ``num_classes`` (0: Identity); init as official."""
        if not (isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 0):
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        ref = next(self.parameters())
        self.num_classes = num_classes
        if num_classes == 0:
            self.head = nn.Identity()
            return
        self.head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
        _init_weights(self.head)

    @staticmethod
    def config_name(model) -> str:
        return "sdt_v3_" + "_".join(map(str, model.embed_dim))

    def arch_summary(self) -> str:
        return (f"dims {'/'.join(map(str, self.embed_dim))}, D={self.D}, img={self.img_size}, in={self.in_channels}, "
                f"classes={self.num_classes}, strides {''.join(map(str, self.downsample_strides))}")

    # ------------------------------------------------------------------ forward
    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Validate an image batch ``[B, C, H, W]`` and cast it to the model's dtype."""
        if isinstance(x, torch.Tensor) and x.ndim == 5 and x.shape[1] != 1:
            raise ValueError(f"V3 (E-SpikeFormer) takes images [B, C, H, W] at one time step, got a 5-D input of "
                             f"shape {tuple(x.shape)} (event frames [B, T, C, H, W]); sum or select frames first")
        x = time_major_input(x, 1, self.in_channels, self.total_stride, False,
                             f"the total stride of downsample_strides={self.downsample_strides}",
                             dtype=self.downsample1_1.encode_conv.weight.dtype)[0]
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> token-mean features ``[B, D3]`` (before the head neuron)."""
        return run_stages(self, self.check_input(x)).flatten(2).mean(2)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B, D3]`` features -> integer neuron (0..D, norm 1) -> head. ``pre_logits``: the neuron's output."""
        s = self.spike(feats)
        return s if pre_logits else self.head(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, D={self.D}, "
                f"downsample_strides={self.downsample_strides}")


Spiking_vit_MetaFormer_Spike_SepConv = ESpikeFormer  # the official class name


def _check_config(img_size, in_channels, num_classes, embed_dim, num_heads, mlp_ratio, D, drop_path_rate,
                  downsample_strides):
    # the stage layout is V2's: the same checks (one time step, no kd head), then the neuron's D
    _check_stage_config(img_size, in_channels, num_classes, embed_dim, num_heads, mlp_ratio, 1, False, drop_path_rate,
                        downsample_strides)
    if not (isinstance(D, int) and not isinstance(D, bool) and 1 <= D <= 64):
        raise ValueError(f"D (the integer neuron's largest value; official 4) must be an int in 1..64, got {D!r}")


# --------------------------------------------------------------------------------------------------
# Spike-driven form
# --------------------------------------------------------------------------------------------------
class VirtualSteps(nn.Module):
    """A conv/linear layer run on D binary virtual steps: ``synapse`` (the layer without bias) on ``[D*N, ...]``
    spikes, the D outputs summed and divided by ``norm``, the bias added once. Equals ``layer(v / norm)`` for the
    integers v the spikes encode, because the layer is linear. Hooks on ``synapse`` see the binary spikes."""

    def __init__(self, layer: nn.Module, steps: int, norm: float):
        super().__init__()
        self.steps, self.norm = int(steps), float(norm)
        self.synapse = copy.deepcopy(layer)
        bias = self.synapse.bias
        self.synapse.bias = None
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.synapse.virtual_steps = self.steps  # read by the energy report (FLOPs per real step)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        y = self.synapse(s).unflatten(0, (self.steps, -1)).sum(0) / self.norm
        if self.bias is None:
            return y
        return y + (self.bias if isinstance(self.synapse, nn.Linear) else self.bias.view(-1, *([1] * (y.ndim - 2))))

    def extra_repr(self) -> str:
        return f"steps={self.steps}, norm={self.norm:g}"


def spike_driven_form(model: ESpikeFormer, inplace: bool = False) -> ESpikeFormer:
    """Eval-mode model (a copy unless ``inplace``) that computes on binary spikes only: BN folded, every neuron
    emits D binary virtual steps, every conv/linear but the first sums its D per-step outputs."""
    if getattr(model, "is_spike_form", False):
        return model if inplace else copy.deepcopy(model)
    model = fold_bn(model, inplace=inplace)
    first = model.downsample1_1.encode_conv
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.Conv1d, nn.Conv2d, nn.Linear)) and child is not first:
                norm = model.spike.norm if child is model.head else float(model.D)
                setattr(parent, name, VirtualSteps(child, model.D, norm))
    for m in model.modules():
        if isinstance(m, IntegerNeuron):
            m.expand = True
    model.is_spike_form = True
    return model


# --------------------------------------------------------------------------------------------------
# Official zoo (SDT_V3/Classification/Model_Base/models.py: Efficient_Spiking_Transformer_{t,s,m,l})
# --------------------------------------------------------------------------------------------------
_IMAGENET = dict(img_size=224, in_channels=3, num_classes=1000, num_heads=8, mlp_ratio=4)
OFFICIAL_CONFIGS = {
    "sdt_v3_t": dict(embed_dim=(24, 48, 96, 128), **_IMAGENET),
    "sdt_v3_s": dict(embed_dim=(32, 64, 128, 192), **_IMAGENET),
    "sdt_v3_m": dict(embed_dim=(48, 96, 192, 240), **_IMAGENET),
    "sdt_v3_l": dict(embed_dim=(64, 128, 256, 360), **_IMAGENET),
}
OFFICIAL_PARAMS = {"sdt_v3_t": 2_702_048, "sdt_v3_s": 5_105_608, "sdt_v3_m": 10_023_112, "sdt_v3_l": 18_987_504}
_PAPER_TOP1 = {"sdt_v3_m": 78.5, "sdt_v3_l": 79.8}

register_family(ModelFamily(
    "sdt_v3", ESpikeFormer, "Spike-driven Transformer V3 (E-SpikeFormer)",
    paper="Yao et al., Scaling Spike-driven Transformer with Efficient Spike Firing Approximation Training, "
          "IEEE TPAMI 47(4), 2025 (arXiv 2411.16061)",
    official_code="https://github.com/BICLab/Spike-Driven-Transformer-V3", first_conv="downsample1_1.encode_conv"))

for _name, _kw in OFFICIAL_CONFIGS.items():
    _size = _name[-1]
    register_model(ModelInfo(
        _name, dict(_kw), "imagenet", "SDT_V3/Classification/Model_Base/models.py: Efficient_Spiking_Transformer_"
        + _size, OFFICIAL_PARAMS[_name], _PAPER_TOP1.get(_name),
        notes=f"official Efficient_Spiking_Transformer_{_size} (integer training at 1 step, D=4)",
        recipe="imagenet_v3_" + _size, extra={"crop_pct": 0.875, "interpolation": "bicubic"}, family="sdt_v3"))

# Ours: small E-SpikeFormers for a 2-core CPU (no official counterpart; params are our own counts).
_SMALL_V3 = [
    # name, dataset, embed_dim, heads, strides, img, in_channels, params, recipe, notes
    ("sdt_v3_digits_t", "digits", (8, 16, 32, 48), 2, (2, 1, 1, 1, 1), 16, 1, None, "digits_v3",
     "V3 on sklearn digits (16 px, 8x8 tokens in every stage)"),
    ("sdt_v3_fmnist_t", "fashion-mnist", (16, 32, 48, 64), 2, (2, 2, 1, 1, 1), 28, 1, None, "fashion_mnist_v3",
     "Fashion-MNIST in a 45-minute CPU budget (14x14 tokens in ConvBlock1_1, 7x7 from there on)"),
    ("sdt_v3_cifar10_s", "cifar10", (32, 64, 128, 192), 8, (1, 2, 2, 1, 1), 32, 3, None, "cifar10_v3",
     "CIFAR-10 (8x8 tokens in stages 3-4)"),
]
for _name, _ds, _dims, _heads, _strides, _img, _cin, _params, _recipe, _notes in _SMALL_V3:
    register_model(ModelInfo(
        _name, dict(img_size=_img, in_channels=_cin, num_classes=10, embed_dim=_dims, num_heads=_heads, mlp_ratio=4,
                    downsample_strides=_strides),
        _ds, None, _params, None, notes=_notes, recipe=_recipe, family="sdt_v3"))
