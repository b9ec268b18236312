"""Building blocks shared by the model families.

    ops.py        time folding (``seq``), NHWC layout, token mean, spike-input convs, DVS Erode, drop path,
                  and the parameter-free primitives (mask, token sum, matmul) hooks can see
    config.py     ``BlockConfig``: the one object an encoder block is built from
    attention.py  the attention registry: SDSA and its ablation variants (``list_attention()``)
    repconv.py    re-parameterisable conv (V2's RepConv) with its BN-valued padding
"""
from .attention import (ATTN_MODES, MS_SSA_Conv, Attention, QKVAttention, SoftmaxAttention,
                        SpikeDrivenSelfAttention, SpikeDrivenSelfAttentionV1, SpikingSelfAttention, attention_class,
                        list_attention, register_attention)
from .config import SHORTCUTS, BlockConfig
from .repconv import BNAndPad, RepConv
from .ops import (SpikeConv2d, SpikeMask, SpikeMatmul, SpikeRowMatmul, TokenSum, _nhwc, drop_path, erode, nhwc,
                  seq, time_major_input, token_mean)

__all__ = [
    "ATTN_MODES", "SHORTCUTS", "BlockConfig", "Attention", "QKVAttention", "SpikeDrivenSelfAttention",
    "SpikeDrivenSelfAttentionV1", "SpikingSelfAttention", "SoftmaxAttention", "MS_SSA_Conv", "attention_class",
    "list_attention", "register_attention", "SpikeConv2d", "SpikeMask", "SpikeMatmul", "SpikeRowMatmul",
    "TokenSum", "BNAndPad", "RepConv", "drop_path", "erode", "nhwc", "_nhwc", "seq", "time_major_input", "token_mean",
]
