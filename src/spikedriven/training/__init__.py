"""Training and evaluation of Spike-driven Transformers (the official recipes, spec §5).

    recipe.py       the recipe schema (official key names and semantics), YAML + command-line resolution
    data.py         datasets -> transforms -> deterministic samplers -> loaders; Mixup/CutMix; DVS augmentation
    losses.py       label-smoothing / soft-target / TET losses
    distributed.py  torchrun / DDP set-up (NCCL on GPU, gloo on CPU), rank-0 helpers, metric reduction
    loop.py         the Trainer: optimizer, schedule, AMP, EMA, clipping, checkpoints and exact resume
    report.py       run folder: metrics CSV, TensorBoard, curve PNG, firing-rate/energy summary

The public entry points are re-exported by :mod:`spikedriven.train`.
"""
from .recipe import Recipe, find_config, list_configs, resolve_recipe

__all__ = ["Recipe", "resolve_recipe", "find_config", "list_configs"]
