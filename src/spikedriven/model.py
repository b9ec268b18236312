"""Spike-driven Transformer (Yao et al., NeurIPS 2023) and its registry of named configurations.

    x [B,C,H,W] (repeated over T)  or  [B,T,C,H,W] (event frames)
      -> MS_SPS stem -> L x (SDSA + MLP, membrane shortcuts) -> mean over tokens -> LIF -> Linear
      -> mean over T  (or per-step logits [T,B,K] with tet=True)

The state_dict is key-for-key and shape-for-shape the official one (including the unused
``talking_heads.weight`` and BN ``num_batches_tracked``), so official checkpoints load with strict=True.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .layers import ATTN_MODES, SHORTCUTS, MS_Block_Conv, MS_SPS, _nhwc, token_mean
from .neuron import make_neuron

__all__ = ["SpikeDrivenTransformer", "create_model", "list_models", "model_info", "ModelInfo", "register_model"]


class SpikeDrivenTransformer(nn.Module):
    """The Spike-driven Transformer.

    Args:
        img_size: nominal input side (H = W); any size divisible by the stem's pooling factor is accepted.
        in_channels: 3 for RGB, 2 for DVS polarity frames, 1 for grey images.
        num_classes: K; 0 gives a feature extractor (head = Identity).
        embed_dim: D; must be divisible by 8 (stem plan D/8..D) and by num_heads.
        depth: L encoder blocks.
        num_heads, mlp_ratio: attention heads (no effect on SDSA's result) and MLP expansion.
        T: time steps; static images are repeated T times, event input must bring exactly T frames.
        pooling_stat: 4 chars, '1' enables the 3x3/2 max-pool of each stem stage.
        dvs_mode: the official "Erode" (3x3 max) on K, V, K⊙V and the output (CIFAR10-DVS recipe).
        tet: return per-step logits [T,B,K] for the TET loss instead of their mean.
        spike_mode: "lif" (official) or "plif" (learnable tau).
        drop_path_rate: stochastic depth, linearly increasing over blocks. The official code builds DropPath
            but never applies it; here it is applied (paper intent), so the default 0.0 matches official runs.
        attn_mode / shortcut: ablation switches (see ``layers``); defaults are the paper's model.
        lif_backend: neuron implementation, "auto" | "torch" | "cpp" | "triton" (None: env or "auto").
        channels_last: run every activation in NHWC storage (same shapes and results; convs, BN and the SDSA
            head split become cheaper: +25-55% training throughput on CPU, see BENCHMARKS.md). An execution
            option: it does not change the state_dict.
        compact_spikes: convs whose input is binary save it for backward as uint8 (lossless, 4x less memory).
    """

    def __init__(
        self,
        img_size: int = 224,
        in_channels: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 4,
        T: int = 4,
        pooling_stat: str = "1111",
        dvs_mode: bool = False,
        tet: bool = False,
        spike_mode: str = "lif",
        drop_path_rate: float = 0.0,
        attn_mode: str = "sdsa",
        shortcut: str = "ms",
        lif_backend: str | None = None,
        channels_last: bool = True,
        compact_spikes: bool = True,
    ):
        super().__init__()
        _check_config(img_size, in_channels, num_classes, embed_dim, depth, num_heads, mlp_ratio, T, pooling_stat,
                      spike_mode, drop_path_rate, attn_mode, shortcut)
        self.img_size, self.in_channels, self.num_classes = img_size, in_channels, num_classes
        self.embed_dim, self.depth, self.num_heads, self.mlp_ratio = embed_dim, depth, num_heads, mlp_ratio
        self.T, self.pooling_stat, self.dvs_mode, self.tet = T, pooling_stat, dvs_mode, tet
        self.spike_mode, self.attn_mode, self.shortcut = spike_mode, attn_mode, shortcut
        self.drop_path_rate = drop_path_rate
        self.downsample = 2 ** pooling_stat.count("1")

        self.patch_embed = MS_SPS(in_channels, embed_dim, pooling_stat, spike_mode, shortcut)
        self.channels_last = channels_last
        dpr = torch.linspace(0, drop_path_rate, depth).tolist() if depth else []
        self.block = nn.ModuleList(
            MS_Block_Conv(embed_dim, num_heads, mlp_ratio, spike_mode, dvs_mode, attn_mode, shortcut, dpr[j])
            for j in range(depth)
        )
        self.head_lif = make_neuron(spike_mode)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        self.set_execution(lif_backend=lif_backend, compact_spikes=compact_spikes)

    # ------------------------------------------------------------------ helpers
    def set_execution(self, lif_backend: str | None = None, channels_last: bool | None = None,
                      compact_spikes: bool | None = None) -> "SpikeDrivenTransformer":
        """Switch the fast paths (None leaves a setting unchanged); none of them changes results or weights.

        lif_backend: "auto" (fused kernel per device) | "torch" (reference loop) | "cpp" | "triton".
        channels_last: NHWC activation storage. compact_spikes: spike-input convs save their input as uint8.
        """
        if lif_backend is not None:
            self.set_lif_backend(lif_backend)
        if channels_last is not None:
            self.channels_last = channels_last
        if compact_spikes is not None:
            from .layers import SpikeConv2d

            for m in self.modules():
                if isinstance(m, SpikeConv2d):
                    m.compact = bool(compact_spikes) and getattr(m, "_compact_allowed", True)
        return self

    @property
    def channels_last(self) -> bool:
        return self.patch_embed.channels_last

    @channels_last.setter
    def channels_last(self, value: bool) -> None:
        self.patch_embed.channels_last = bool(value)  # the stem keeps the layout past a 1-channel image

    def set_lif_backend(self, backend: str) -> "SpikeDrivenTransformer":
        """Switch every neuron to ``backend`` ("auto", "torch", "cpp", "triton")."""
        from .neuron import _VALID_BACKENDS

        if backend not in _VALID_BACKENDS:
            raise ValueError(f"lif backend must be one of {_VALID_BACKENDS}, got {backend!r}")
        for m in self.modules():
            if hasattr(m, "backend") and hasattr(m, "v_threshold"):
                m.backend = backend
        return self

    def to_time_major(self, x: torch.Tensor) -> torch.Tensor:
        """Validate the input and return ``[T, B, C, H, W]`` (static images repeated T times)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor input, got {type(x).__name__}")
        if x.ndim not in (4, 5):
            raise ValueError(
                f"expected input of rank 4 [B, C, H, W] (static image) or rank 5 [B, T, C, H, W] (event frames), "
                f"got rank {x.ndim} with shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"expected a floating-point input (float32/bfloat16/float16), got {x.dtype}; "
                f"convert images with x.float() (and normalise them) first"
            )
        c, h, w = x.shape[-3:]
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels (dim -3), got {c} in shape {tuple(x.shape)}")
        f = self.downsample
        if h % f or w % f:
            raise ValueError(
                f"input height and width must be divisible by {f} (pooling_stat={self.pooling_stat!r} halves them "
                f"{self.pooling_stat.count('1')} times), got {h}x{w}; e.g. use {math.ceil(h / f) * f}x{math.ceil(w / f) * f}"
            )
        if x.ndim == 5 and x.shape[1] != self.T:
            raise ValueError(
                f"event input [B, T, C, H, W] must have T={self.T} frames (dim 1), got {x.shape[1]}; "
                f"re-frame the events or build the model with T={x.shape[1]}"
            )
        if not x.is_meta and not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).sum().item()
            raise ValueError(f"input contains {bad} NaN/inf value(s); the network needs finite inputs")
        xt = x.unsqueeze(0).expand(self.T, *x.shape) if x.ndim == 4 else x.transpose(0, 1)
        # channels_last: materialise [T,B,C,H,W] with NHWC storage, so every [T*B,C,H,W] view is NHWC for free
        return _nhwc(xt) if self.channels_last else xt

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> token-mean membrane features ``[T, B, D]`` (before head_lif)."""
        x = self.patch_embed(self.to_time_major(x))
        for blk in self.block:
            x = blk(x)
        return token_mean(x, nhwc_grad=self.channels_last)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        out = self.head(self.head_lif(feats))  # [T, B, K]
        return out if self.tet else out.mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def extra_repr(self) -> str:
        return (f"T={self.T}, embed_dim={self.embed_dim}, depth={self.depth}, pooling_stat={self.pooling_stat!r}, "
                f"dvs_mode={self.dvs_mode}, tet={self.tet}, attn_mode={self.attn_mode!r}, shortcut={self.shortcut!r}")


def _check_config(img_size, in_channels, num_classes, embed_dim, depth, num_heads, mlp_ratio, T, pooling_stat,
                  spike_mode, drop_path_rate, attn_mode, shortcut):
    def need(cond, msg):
        if not cond:
            raise ValueError(msg)

    need(isinstance(embed_dim, int) and embed_dim > 0, f"embed_dim must be a positive int, got {embed_dim!r}")
    need(embed_dim % 8 == 0, f"embed_dim must be divisible by 8 (stem channels D/8, D/4, D/2, D), got {embed_dim}")
    need(isinstance(num_heads, int) and num_heads > 0, f"num_heads must be a positive int, got {num_heads!r}")
    need(embed_dim % num_heads == 0, f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
    need(isinstance(depth, int) and depth >= 0, f"depth must be an int >= 0, got {depth!r}")
    need(isinstance(T, int) and T >= 1, f"T (time steps) must be an int >= 1, got {T!r}")
    need(isinstance(in_channels, int) and in_channels >= 1, f"in_channels must be an int >= 1, got {in_channels!r}")
    need(isinstance(num_classes, int) and num_classes >= 0, f"num_classes must be an int >= 0, got {num_classes!r}")
    need(mlp_ratio > 0 and int(embed_dim * mlp_ratio) >= 1, f"mlp_ratio must be > 0, got {mlp_ratio!r}")
    need(isinstance(pooling_stat, str) and len(pooling_stat) == 4 and set(pooling_stat) <= {"0", "1"},
         f"pooling_stat must be 4 characters of '0'/'1' (one per stem stage), got {pooling_stat!r}")
    need(isinstance(img_size, int) and img_size > 0 and img_size % 2 ** pooling_stat.count("1") == 0,
         f"img_size must be a positive int divisible by {2 ** pooling_stat.count('1')} for pooling_stat "
         f"{pooling_stat!r}, got {img_size!r}")
    need(spike_mode in ("lif", "plif"), f"spike_mode must be 'lif' or 'plif', got {spike_mode!r}")
    need(0.0 <= drop_path_rate < 1.0, f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
    need(attn_mode in ATTN_MODES, f"attn_mode must be one of {ATTN_MODES}, got {attn_mode!r}")
    need(shortcut in SHORTCUTS, f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")


def _init_weights(m: nn.Module) -> None:
    # Official init: conv weights trunc_normal(std .02), conv biases 0, BN (1, 0). The head Linear and the
    # unused Conv1d keep PyTorch's defaults, as in the official code.
    if isinstance(m, nn.Conv2d):
        nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ==================================================================================================
# Registry (timm-style): named configs with metadata beside the model
# ==================================================================================================
@dataclass(frozen=True)
class ModelInfo:
    name: str
    kwargs: dict[str, Any]
    dataset: str
    official_config: str | None = None  # path inside BICLab/Spike-Driven-Transformer conf/
    params: int | None = None  # official parameter count (spec §4), incl. the unused talking_heads
    paper_top1: float | None = None
    paper_energy_mj: float | None = None
    eval_img_size: int | None = None
    notes: str = ""
    recipe: str | None = None  # our training config under configs/
    extra: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(info: ModelInfo) -> ModelInfo:
    if info.name in _REGISTRY:
        raise ValueError(f"model {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


def _imagenet(L, D, params, top1, mj, conf, **extra):
    kw = dict(img_size=224, in_channels=3, num_classes=1000, embed_dim=D, depth=L, T=4, pooling_stat="1111")
    return ModelInfo(f"sdt_{L}_{D}", kw, "imagenet", conf, params, top1, mj, **extra)


for _info in [
    _imagenet(8, 384, 16_816_536, 72.28, 3.90, "imagenet/8_384_300E_t4.yml", recipe="imagenet_8_384"),
    _imagenet(6, 512, 23_373_736, 74.11, 3.56, "imagenet/6_512_300E_t4.yml", recipe="imagenet_6_512"),
    _imagenet(8, 512, 29_689_896, 74.57, 4.50, "imagenet/8_512_300E_t4.yml", recipe="imagenet_8_512"),
    _imagenet(10, 512, 36_006_056, 74.66, 5.53, "imagenet/10_384_300E_t4.yml", recipe="imagenet_10_512",
              notes="official file is named 10_384 but builds 10 x 512"),
    _imagenet(8, 768, 66_339_144, 77.07, 6.09, "imagenet/8_768_300E_t4.yml", eval_img_size=288,
              recipe="imagenet_8_768", notes="77.07% is evaluated at 288 px (76.32% at 224)"),
]:
    register_model(_info)


def _small(name, dataset, D, K, params, conf, top1=None, T=4, img=32, cin=3, pool="0011", depth=2, **kw):
    extra = {k: kw.pop(k) for k in ("notes", "recipe") if k in kw}
    mkw = dict(img_size=img, in_channels=cin, num_classes=K, embed_dim=D, depth=depth, T=T, pooling_stat=pool, **kw)
    return ModelInfo(name, mkw, dataset, conf, params, top1, **extra)


for _info in [
    _small("sdt_cifar10_2_256", "cifar10", 256, 10, 2_567_082, "cifar10/2_256_300E_t4.yml", recipe="cifar10_2_256"),
    _small("sdt_cifar10_2_512", "cifar10", 512, 10, 10_233_546, "cifar10/2_512_300E_t4.yml", 95.6,
           recipe="cifar10_2_512"),
    _small("sdt_cifar10_2_512_tet", "cifar10", 512, 10, 10_233_546, "cifar10/2_512_300E_t4_TET.yml", tet=True,
           recipe="cifar10_2_512_tet"),
    _small("sdt_cifar100_2_256", "cifar100", 256, 100, 2_590_212, "cifar100/2_256_300E_t4.yml",
           recipe="cifar100_2_256"),
    _small("sdt_cifar100_2_512", "cifar100", 512, 100, 10_279_716, "cifar100/2_512_300E_t4.yml", 78.4,
           recipe="cifar100_2_512"),
    _small("sdt_gesture_2_256_t10", "gesture", 256, 11, 2_567_051, "gesture/2_256_200E_t10.yml", T=10, img=128,
           cin=2, pool="0111", recipe="gesture_t10"),
    _small("sdt_gesture_2_256_t16", "gesture", 256, 11, 2_567_051, "gesture/2_256_200E_t16.yml", 99.3, T=16,
           img=128, cin=2, pool="0111", recipe="gesture_t16"),
    _small("sdt_cifar10dvs_2_256_t10", "cifar10-dvs", 256, 10, 2_566_794, "cifar10-dvs/2_256_200E_t10_TET.yml",
           T=10, img=64, cin=2, dvs_mode=True, tet=True, recipe="cifar10dvs_t10"),
    _small("sdt_cifar10dvs_2_256_t16", "cifar10-dvs", 256, 10, 2_566_794, None, 80.0, T=16, img=64, cin=2,
           dvs_mode=True, tet=True, recipe="cifar10dvs_t16",
           notes="the paper's 80.0% uses T=16; the official repo ships only the T=10 config"),
    # ours: small models sized for a 2-core CPU (params are our own counts; no official counterpart)
    _small("sdt_digits_1_64", "digits", 64, 10, 112_898, None, img=16, cin=1, pool="1100", depth=1,
           recipe="digits", notes="the main job: sklearn digits, ~1 minute on 2 cores"),
    _small("sdt_fmnist_1_128", "fashion-mnist", 128, 10, 446_138, None, T=2, img=28, cin=1, pool="1100", depth=1,
           recipe="fashion_mnist", notes="1 block, T=2: the most accuracy we measured in a 45-minute CPU budget"),
    _small("sdt_sim_fmnist_dvs_2_128_t10", "sim-fashion-mnist-dvs", 128, 10, 646_026, None, T=10, cin=2, pool="1100",
           dvs_mode=True, tet=True, recipe="sim_fmnist_dvs", notes="SIMULATED events (spikedriven.data.simulate)"),
]:
    register_model(_info)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob pattern."""
    import fnmatch

    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} Known models: {', '.join(list_models())}") from None


def create_model(name: str, checkpoint_path: str | None = None, strict: bool = True, **overrides) -> SpikeDrivenTransformer:
    """Build a registered model; keyword overrides replace config values (e.g. ``T=8, num_classes=100``).

    ``checkpoint_path`` loads weights (ours, official ``.pth.tar`` or ``.safetensors``) strictly.
    """
    info = model_info(name)
    kwargs = copy.deepcopy(info.kwargs)
    unknown = set(overrides) - _CONSTRUCTOR_ARGS
    if unknown:
        raise TypeError(f"unknown model argument(s) {sorted(unknown)}; valid: {sorted(_CONSTRUCTOR_ARGS)}")
    kwargs.update(overrides)
    model = SpikeDrivenTransformer(**kwargs)
    model.model_name = name
    if checkpoint_path is not None:
        from .checkpoint import load_into_model

        load_into_model(model, checkpoint_path, strict=strict)
    return model


_CONSTRUCTOR_ARGS = set(SpikeDrivenTransformer.__init__.__code__.co_varnames[1:SpikeDrivenTransformer.__init__.__code__.co_argcount])


def bn_is_calibrated(model: nn.Module) -> bool:
    """True if any BatchNorm has seen data (its running statistics are not the initial mean 0 / var 1)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return not bns or any(int(m.num_batches_tracked) > 0 for m in bns if m.num_batches_tracked is not None)


@torch.no_grad()
def calibrate_bn(model: nn.Module, batches) -> nn.Module:
    """Set BatchNorm running statistics to the cumulative mean/var over ``batches`` (no weight change).

    An untrained model in eval mode has BN running stats (0, 1) on top of std-0.02 weights, so almost no
    neuron reaches threshold; after calibration it fires as it does in training, which makes firing-rate and
    spike-driven checks on untrained models meaningful.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for m, (mom, _) in zip(bns, saved):
            m.momentum = mom
        model.train(was_training)
    return model
