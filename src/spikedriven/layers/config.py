"""The one configuration object a Spike-driven Transformer block (and its attention and MLP) is built from."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BlockConfig", "SHORTCUTS"]

SHORTCUTS = ("ms", "sew", "none")


@dataclass(frozen=True)
class BlockConfig:
    """Everything an encoder block needs.

    shortcut: "ms" membrane shortcut (paper, default: neurons at the start of each branch, residuals add
    real-valued membrane potentials, so every conv/linear input is binary); "sew" spike-element-wise
    (Spikformer/SEW-ResNet: neurons at the end of each branch, spikes are added, the next layer sees integer
    "multi-bit spikes"); "none" no residual connection.
    attn_mode: the name of a registered attention (``spikedriven.layers.list_attention()``).
    dvs_mode: the official DVS "Erode" (3x3 max) on K, V, K⊙V and the output.
    """

    dim: int
    num_heads: int = 8
    mlp_ratio: float = 4.0
    spike_mode: str = "lif"
    dvs_mode: bool = False
    attn_mode: str = "sdsa"
    shortcut: str = "ms"
    drop_path_rate: float = 0.0

    def __post_init__(self):
        if self.num_heads < 1 or self.dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")

    @property
    def hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @property
    def binary_input(self) -> bool:
        """Whether the branch inputs are binary spikes (not SEW's integer sums)."""
        return self.shortcut != "sew"
