"""Official YAML configs (BICLab/Spike-Driven-Transformer ``conf/**/*.yml``) with the official key semantics.

The official train.py loads the YAML with ``yaml.safe_load`` and feeds it to ``argparse.set_defaults``, so:
- keys are matched against argparse *dest* names (underscores); hyphenated keys such as ``model-ema`` or
  ``mlp-ratio`` silently do nothing there. We keep that meaning and warn about each one;
- ``dim`` exists only in YAML; ``layer`` is the depth; ``time_steps`` is T;
- ``dvs_mode`` is derived from the dataset name (``spikedriven.data.info.uses_erode``: cifar10-dvs, cifar10-dvs-tet);
- ``drop_path`` builds DropPath modules that the official forward never calls: released checkpoints were
  trained without stochastic depth, so a model built from an official file gets drop_path_rate=0 (warned).
"""
from __future__ import annotations

import os
from typing import Any

import yaml

__all__ = [
    "OFFICIAL_DEFAULTS",
    "OFFICIAL_NOOP_KEYS",
    "ConfigWarning",
    "load_yaml",
    "official_noop_warnings",
    "OFFICIAL_TO_MODEL",
    "model_kwargs_from_official",
    "official_value",
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


# Official config key -> SpikeDrivenTransformer argument, with the type the official argparse gives it. The one
# table for official YAML files and for recipe keys (``dim: 256`` in a recipe is ``embed_dim=256``).
OFFICIAL_TO_MODEL: dict[str, tuple[str, type]] = {
    "img_size": ("img_size", int), "in_channels": ("in_channels", int), "num_classes": ("num_classes", int),
    "dim": ("embed_dim", int), "layer": ("depth", int), "num_heads": ("num_heads", int),
    "mlp_ratio": ("mlp_ratio", float), "time_steps": ("T", int), "pooling_stat": ("pooling_stat", str),
    "TET": ("tet", bool), "spike_mode": ("spike_mode", str),
}


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping safely: no Python object tags, a regular file of at most ``MAX_YAML_BYTES``, and at
    most ``MAX_TREE_NODES`` values once its aliases are expanded (a "billion laughs" file is refused)."""
    from ..bounds import MAX_YAML_BYTES, check_tree, regular_file

    if regular_file(path, "a YAML config") > MAX_YAML_BYTES:
        raise ValueError(f"{path}: {os.path.getsize(path):,} bytes is not a config (at most {MAX_YAML_BYTES:,} "
                         f"bytes are read)")
    with open(path, encoding="utf-8") as f:
        try:
            cfg = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML (or a Python tag, which is never run): "
                             f"{' '.join(str(e).split())[:300]}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    check_tree(cfg, f"{path}", max_nodes=100_000, max_depth=50)
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
    from ..data.info import uses_erode

    g = {**OFFICIAL_DEFAULTS, **{k: v for k, v in cfg.items() if "-" not in str(k)}}
    pooling = g["pooling_stat"]
    if not isinstance(pooling, str):  # unquoted 0011 is read by YAML 1.1 as the octal integer 9
        raise ValueError(f"pooling_stat must be a quoted 4-character string such as \"0011\", got {pooling!r} "
                         f"(YAML reads unquoted digits as a number)")
    kw = {arg: official_value(key, g[key], conv) for key, (arg, conv) in OFFICIAL_TO_MODEL.items()}
    kw.update(dvs_mode=uses_erode(str(g.get("dataset") or "")), drop_path_rate=0.0)
    return kw


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def official_value(key: str, value: Any, typ: type, source: str = "official config") -> Any:
    """``value`` of an official key as ``typ``, strictly: a whole number for int (``time_steps: 2.7`` is refused,
    not truncated), a number for float, true/false (or the strings "true"/"false") for bool (``"False"`` is
    False, never ``bool("False")``), a string for str. ValueError naming the key otherwise."""
    bad = ValueError(f"{source}: {key} = {value!r} is not {({int: 'a whole number', float: 'a number', bool: 'true or false', str: 'a string'}).get(typ, typ.__name__)}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if typ is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise bad
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise bad
        return float(value)
    if typ is str and not isinstance(value, str):
        raise bad
    return value
