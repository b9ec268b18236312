"""Training and evaluation of the model families (the official recipes, spec §5).

    recipe.py       the recipe schema (official key names and semantics) and its YAML resolution
    api.py          train(recipe, **overrides), evaluate_checkpoint(...)
    loop.py         the Trainer: optimizer, schedule, AMP, EMA, clipping, checkpoints, exact resume, stop policy
    data.py         datasets -> transforms -> deterministic samplers -> loaders; Mixup/CutMix; DVS augmentation
    losses.py       label-smoothing / soft-target / TET losses
    distributed.py  torchrun / DDP set-up (NCCL on GPU, gloo on CPU), rank-0 helpers, metric reduction
    report.py       run folder: metrics CSV, TensorBoard, curve PNG, firing-rate/energy summary

The commands sit in ``spikedriven.cli.train``.
"""
from .recipe import DEFAULT_CONFIG, Recipe, find_config, list_configs, resolve_recipe

__all__ = ["Recipe", "resolve_recipe", "find_config", "list_configs", "DEFAULT_CONFIG"]
