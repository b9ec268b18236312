"""Official YAML configs (BICLab/Spike-Driven-Transformer ``conf/**/*.yml``) with the official key semantics.

The official train.py loads the YAML with ``yaml.safe_load`` and feeds it to ``argparse.set_defaults``, so:
- keys are matched against argparse *dest* names (underscores); hyphenated keys such as ``model-ema`` or
  ``mlp-ratio`` silently do nothing there. We keep that meaning and warn about each one;
- ``dim`` exists only in YAML; ``layer`` is the depth; ``time_steps`` is T;
- ``dvs_mode`` is derived from the dataset name (cifar10-dvs, cifar10-dvs-tet);
- ``drop_path`` builds DropPath modules that the official forward never calls: released checkpoints were
  trained without stochastic depth, so a model built from an official file gets drop_path_rate=0 (warned).
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import yaml

__all__ = [
    "OFFICIAL_DEFAULTS",
    "OFFICIAL_NOOP_KEYS",
    "ConfigWarning",
    "load_yaml",
    "official_noop_warnings",
    "model_kwargs_from_official",
    "create_model_from_yaml",
]


class ConfigWarning(UserWarning):
    """A config key that the official code accepts but ignores."""


# train.py argparse defaults for keys a config may omit (spec §5.1).
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "num_classes": 1000, "layer": 4, "time_steps": 4, "num_heads": 8, "mlp_ratio": 4,
    "pooling_stat": "1111", "spike_mode": "lif", "TET": False, "TET_means": 1.0, "TET_lamb": 0.0,
    "batch_size": 32, "val_batch_size": 16, "opt": "sgd", "lr": 0.01, "sched": "step", "epochs": 200,
    "warmup_epochs": 3, "warmup_lr": 1e-4, "min_lr": 1e-5, "weight_decay": 1e-4, "drop_path": 0.2,
    "smoothing": 0.1, "hflip": 0.5, "color_jitter": 0.4, "scale": [0.08, 1.0], "ratio": [3 / 4, 4 / 3],
    "mixup": 0.0, "cutmix": 0.0, "seed": 42, "workers": 4, "img_size": 224, "dataset": "",
}

# Keys the official code parses (or receives) but which change nothing, with the reason.
OFFICIAL_NOOP_KEYS: dict[str, str] = {
    "use_conv_as_linear": "parsed but never read",
    "aug_repeats": "no repeated-augmentation sampler exists in the official train.py",
    "init_alif": "parsed but never read",
    "bn_eps": "never applied to the BatchNorm layers",
    "bn_momentum": "never applied to the BatchNorm layers",
    "drop_path": "DropPath is constructed but never called in the official forward; "
                 "models from official files use drop_path_rate=0 (pass drop_path_rate=... to enable it here)",
    "patch_size": "only used for an unused return value",
    "initial_checkpoint": "parsed but unused",
}


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping safely (no Python object tags)."""
    with open(path, encoding="utf-8") as f:
        try:
            cfg = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from e
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a YAML mapping of keys to values, got {type(cfg).__name__}")
    return cfg


def official_noop_warnings(cfg: dict[str, Any]) -> list[str]:
    """Messages for every key of ``cfg`` that the official code silently ignores."""
    msgs = []
    for k, v in cfg.items():
        if "-" in str(k):
            msgs.append(f"official key {k!r} is hyphenated: argparse dests use underscores, so the official code "
                        f"ignores it (value {v!r} has no effect; use {str(k).replace('-', '_')!r} to set it)")
        elif k in OFFICIAL_NOOP_KEYS and v not in (None, False, "", 0, 0.0):
            msgs.append(f"official key {k!r}={v!r} has no effect: {OFFICIAL_NOOP_KEYS[k]}")
    return msgs


def model_kwargs_from_official(cfg: dict[str, Any]) -> dict[str, Any]:
    """Map an official config (dest-named keys) to ``SpikeDrivenTransformer`` keyword arguments."""
    if "dim" not in cfg:
        raise ValueError("official config has no 'dim' key (the embedding dimension exists only in the YAML "
                         "files; every official config sets it)")
    g = {**OFFICIAL_DEFAULTS, **{k: v for k, v in cfg.items() if "-" not in str(k)}}
    dataset = str(g.get("dataset") or "")
    pooling = g["pooling_stat"]
    if not isinstance(pooling, str):  # unquoted 0011 is read by YAML 1.1 as the octal integer 9
        raise ValueError(f"pooling_stat must be a quoted 4-character string such as \"0011\", got {pooling!r} "
                         f"(YAML reads unquoted digits as a number)")
    return dict(
        img_size=int(g["img_size"]),
        in_channels=int(g["in_channels"]),
        num_classes=int(g["num_classes"]),
        embed_dim=int(g["dim"]),
        depth=int(g["layer"]),
        num_heads=int(g["num_heads"]),
        mlp_ratio=float(g["mlp_ratio"]),
        T=int(g["time_steps"]),
        pooling_stat=str(pooling),
        dvs_mode=dataset in ("cifar10-dvs", "cifar10-dvs-tet"),
        tet=bool(g["TET"]),
        spike_mode=str(g["spike_mode"]),
        drop_path_rate=0.0,
    )


def create_model_from_yaml(path: str | os.PathLike, warn: bool = True, **overrides):
    """Build a ``SpikeDrivenTransformer`` from an official (or our) YAML config file."""
    from .model import SpikeDrivenTransformer

    cfg = load_yaml(path)
    if warn:
        for msg in official_noop_warnings(cfg):
            warnings.warn(f"{path}: {msg}", ConfigWarning, stacklevel=2)
    kwargs = model_kwargs_from_official(cfg)
    kwargs.update(overrides)
    return SpikeDrivenTransformer(**kwargs)
