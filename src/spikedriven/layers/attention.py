"""Attention variants as registered classes: SDSA (the paper's), its Version 1, Spikformer's SSA, softmax.

Every attention class declares what the verifier, the energy report and the event engine need to know:

    spike_driven   every product in the operator is a mask or an addition on binary spikes
    output         "binary" (spikes) or "real": what the output projection receives
    operator_ops   in words, what the operator costs ("masks and additions", "integer matmuls + a scale", ...)

The V1 layout (:class:`QKVAttention`) holds the official module names of ``MS_SSA_Conv`` (so every variant has
the official state_dict): an input neuron ``shortcut_lif``, ``{q,k,v}_conv`` (1x1) + ``{q,k,v}_bn`` +
``{q,k,v}_lif``, the operator, ``proj_conv`` + ``proj_bn`` and the block's shortcut. A variant overrides only
:meth:`QKVAttention.attention`, the operator f(Q, K, V) on head-split tensors ``[T, B, h, N, d]``.

Add a variant: subclass :class:`QKVAttention` (or :class:`Attention` for another layout), set the metadata,
implement ``attention``, decorate with ``@register_attention``. ``spikedriven.layers.list_attention()`` lists them.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..neuron import make_neuron
from .config import BlockConfig
from .ops import SpikeConv2d, SpikeMask, SpikeMatmul, TokenSum, drop_path, erode, seq

__all__ = [
    "Attention", "QKVAttention", "SpikeDrivenSelfAttention", "SpikeDrivenSelfAttentionV1", "SpikingSelfAttention",
    "SoftmaxAttention", "register_attention", "attention_class", "list_attention", "ATTN_MODES", "MS_SSA_Conv",
]

_ATTENTION: dict[str, type["Attention"]] = {}


def register_attention(cls: type["Attention"]) -> type["Attention"]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in _ATTENTION:
        raise ValueError(f"attention {cls.name!r} is already registered")
    _ATTENTION[cls.name] = cls
    return cls


def attention_class(name: str) -> type["Attention"]:
    try:
        return _ATTENTION[name]
    except KeyError:
        raise ValueError(f"attn_mode must be one of {tuple(_ATTENTION)}, got {name!r}") from None


def list_attention(layout: str | None = None) -> list[str]:
    """Registered attention names (``layout="sdt"`` for those that fit the V1 block)."""
    return [n for n, c in _ATTENTION.items() if layout is None or c.layout == layout]


class Attention(nn.Module):
    """Base of every registered attention (metadata only; see the module docstring)."""

    name: ClassVar[str] = ""
    layout: ClassVar[str] = ""  # which block layout the class implements ("sdt": V1's MS_SSA_Conv)
    spike_driven: ClassVar[bool] = False
    output: ClassVar[str] = "binary"
    operator_ops: ClassVar[str] = ""
    formula: ClassVar[str] = ""


class QKVAttention(Attention):
    """V1 layout: input neuron, Q/K/V = SN(BN(Conv1x1(S))), operator, BN(Conv1x1) and the block's shortcut."""

    layout = "sdt"

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.cfg = cfg
        self.dim, self.num_heads = cfg.dim, cfg.num_heads
        self.dvs_mode, self.shortcut, self.drop_path_rate = cfg.dvs_mode, cfg.shortcut, cfg.drop_path_rate
        self.scale = 0.125  # official attribute; only the SSA variant uses it
        self.shortcut_lif = make_neuron(cfg.spike_mode)
        for n in "qkv":
            self.add_module(f"{n}_conv", SpikeConv2d(cfg.dim, cfg.dim, 1, 1, bias=False, compact=cfg.binary_input))
            self.add_module(f"{n}_bn", nn.BatchNorm2d(cfg.dim))
            self.add_module(f"{n}_lif", make_neuron(cfg.spike_mode))
        # Official modules every variant keeps for checkpoint compatibility: attn_lif (used by SSA only),
        # talking_heads (never called; its [h, h, 1] weight is in the state_dict) and talking_heads_lif, the
        # SDSA mask neuron (v_th 0.5; also reachable as ``mask_lif``).
        self.attn_lif = make_neuron(cfg.spike_mode, v_threshold=0.5)
        self.talking_heads = nn.Conv1d(cfg.num_heads, cfg.num_heads, kernel_size=1, stride=1, bias=False)
        self.talking_heads_lif = make_neuron(cfg.spike_mode, v_threshold=0.5)
        self.proj_conv = SpikeConv2d(cfg.dim, cfg.dim, 1, 1, compact=self.output == "binary")
        self.proj_bn = nn.BatchNorm2d(cfg.dim)

    @property
    def attn_mode(self) -> str:
        return self.name

    @property
    def mask_lif(self) -> nn.Module:
        """The SDSA channel-mask neuron SN_s (official name ``talking_heads_lif``)."""
        return self.talking_heads_lif

    def _heads(self, x):  # [T,B,C,H,W] -> [T,B,h,N,d] (channel c = head*d + lane)
        T, B, C, H, W = x.shape
        return x.flatten(3).transpose(-1, -2).reshape(T, B, H * W, self.num_heads, C // self.num_heads).permute(
            0, 1, 3, 2, 4)

    def _unheads(self, y, shape):  # [T,B,h,N,d] -> [T,B,C,H,W]
        return y.transpose(3, 4).reshape(shape)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The operator f(Q, K, V) on ``[T, B, h, N, d]`` spikes; returns ``[T, B, h, N, d]``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        s = self.shortcut_lif(x) if self.shortcut != "sew" else x
        q = self.q_lif(seq(self.q_bn, seq(self.q_conv, s)))
        k = self.k_lif(seq(self.k_bn, seq(self.k_conv, s)))
        v = self.v_lif(seq(self.v_bn, seq(self.v_conv, s)))
        if self.dvs_mode:
            k, v = erode(k), erode(v)
        y = self.attention(self._heads(q), self._heads(k), self._heads(v))
        if self.dvs_mode:
            y = erode(y)
        out = seq(self.proj_bn, seq(self.proj_conv, self._unheads(y, x.shape)))
        if self.shortcut == "sew":
            out = self.shortcut_lif(out)
        out = drop_path(out, self.drop_path_rate, self.training)
        return out + identity if self.shortcut != "none" else out


@register_attention
class SpikeDrivenSelfAttention(QKVAttention):
    """SDSA (paper Version 2 = the official code): Y = Q ⊙ SN_0.5(SUM_tokens(K ⊙ V)).

    K ⊙ V is a mask (AND), the column sum counts, SN_s fires iff the count is >= 1 (a per-channel OR over
    tokens), and the binary channel mask masks Q: masks and additions only, linear in tokens and channels.
    """

    name = "sdsa"
    spike_driven = True
    output = "binary"
    operator_ops = "masks (AND) and additions (column sums)"
    formula = "Q ⊙ SN(Σ_tokens(K ⊙ V))"

    def __init__(self, cfg: BlockConfig):
        super().__init__(cfg)
        self.mask_kv, self.mask_q, self.token_sum = SpikeMask(), SpikeMask(), TokenSum()

    def attention(self, q, k, v):
        kv = self.mask_kv(k, v)
        if self.dvs_mode:
            kv = erode(kv)
        mask = self.talking_heads_lif(self.token_sum(kv))  # [T,B,h,1,d] binary channel mask
        return self.mask_q(q, mask)


@register_attention
class SpikeDrivenSelfAttentionV1(SpikeDrivenSelfAttention):
    """SDSA Version 1 of the paper: Y = SN_0.5(SUM_tokens(Q ⊙ K)) ⊙ V (the mask is built from Q and K)."""

    name = "sdsa_v1"
    formula = "SN(Σ_tokens(Q ⊙ K)) ⊙ V"

    def attention(self, q, k, v):
        qk = self.mask_kv(q, k)
        if self.dvs_mode:
            qk = erode(qk)
        return self.mask_q(self.talking_heads_lif(self.token_sum(qk)), v)


class _MatmulAttention(QKVAttention):
    """Variants whose operator multiplies matrices (the comparison baselines): Q Kᵀ, then with V."""

    def __init__(self, cfg: BlockConfig):
        super().__init__(cfg)
        self.matmul_qk, self.matmul_av = SpikeMatmul(), SpikeMatmul()


@register_attention
class SpikingSelfAttention(_MatmulAttention):
    """Spikformer's SSA (ablation): Y = SN_0.5(Q Kᵀ V · 0.125): integer matmuls and a scale multiplication."""

    name = "ssa"
    spike_driven = False
    output = "binary"
    operator_ops = "integer matrix products (N x N) and a scale multiplication"
    formula = "SN(Q Kᵀ V · 0.125)"

    def attention(self, q, k, v):
        attn = self.matmul_qk(q, k.transpose(-2, -1))  # [T,B,h,N,N] integer
        return self.attn_lif(self.matmul_av(attn, v) * self.scale)


@register_attention
class SoftmaxAttention(_MatmulAttention):
    """Vanilla self-attention on spike Q/K/V (ablation): Y = softmax(Q Kᵀ / sqrt(d)) V, real-valued output."""

    name = "softmax"
    spike_driven = False
    output = "real"
    operator_ops = "multiply-accumulates, scale and softmax"
    formula = "softmax(Q Kᵀ / √d) V"

    def attention(self, q, k, v):
        d = q.shape[-1]
        attn = torch.softmax(self.matmul_qk(q, k.transpose(-2, -1)) * d**-0.5, dim=-1)
        return self.matmul_av(attn, v)


ATTN_MODES = tuple(list_attention("sdt"))


def MS_SSA_Conv(dim: int, num_heads: int = 8, spike_mode: str = "lif", dvs_mode: bool = False,  # noqa: N802
                attn_mode: str = "sdsa", shortcut: str = "ms", drop_path_rate: float = 0.0) -> QKVAttention:
    """The official class name: builds the registered attention ``attn_mode`` (SDSA by default)."""
    return attention_class(attn_mode)(BlockConfig(dim, num_heads, spike_mode=spike_mode, dvs_mode=dvs_mode,
                                                  attn_mode=attn_mode, shortcut=shortcut,
                                                  drop_path_rate=drop_path_rate))
