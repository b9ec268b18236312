"""Run a model and watch it: forward hooks attached for one run, mode restored and hooks removed afterwards.

The verifier, the energy report, the pictures, the training summary, the engine's validation and
``spikedriven forward`` all observe a model this way. Also: BatchNorm calibration for untrained models (so that
their neurons fire and an observation means something) and per-layer firing rates.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable

import torch
from torch import nn

from .neuron import neurons

__all__ = ["hooks_attached", "run_observed", "firing_rates", "bn_is_calibrated", "calibrate_bn", "as_input"]

Hook = tuple[nn.Module, Callable]


@contextmanager
def hooks_attached(model: nn.Module, pre: Iterable[Hook] = (), post: Iterable[Hook] = (), train: bool = False):
    """Attach forward pre-hooks ``pre`` and forward hooks ``post`` ((module, fn) pairs) and put ``model`` in
    eval mode (``train=True``: training mode) for the duration of the block."""
    handles = [m.register_forward_pre_hook(fn) for m, fn in pre] + [m.register_forward_hook(fn) for m, fn in post]
    was = model.training
    model.train(train)
    try:
        yield
    finally:
        model.train(was)
        for h in handles:
            h.remove()


def as_input(batch):
    """A model input from a batch that may be an (input, target) pair."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def run_observed(model: nn.Module, inputs: Iterable, pre: Iterable[Hook] = (), post: Iterable[Hook] = (),
                 train: bool = False, max_batches: int | None = None) -> list:
    """Run ``model`` on each element of ``inputs`` (tensors or (input, target) pairs) without autograd, with the
    hooks attached; returns the outputs."""
    outs = []
    with torch.no_grad(), hooks_attached(model, pre, post, train):
        for batch in inputs:
            outs.append(model(as_input(batch)))
            if max_batches is not None and len(outs) >= max_batches:
                break
    return outs


def firing_rates(model: nn.Module, inputs: Iterable) -> dict[str, float]:
    """Mean firing rate (fraction of 1s) of every neuron layer that ran, over all ``inputs``."""
    sums: dict[str, list[float]] = {}

    def hook(name):
        def fn(mod, args, out):
            s = sums.setdefault(name, [0.0, 0])
            s[0] += float(out.float().sum())
            s[1] += out.numel()
        return fn

    run_observed(model, inputs, post=[(m, hook(n)) for n, m in neurons(model)])
    return {n: s / max(c, 1) for n, (s, c) in sums.items()}


def _bns(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def bn_is_calibrated(model: nn.Module) -> bool:
    """True if any BatchNorm has seen data (its running statistics are not the initial mean 0 / var 1)."""
    bns = _bns(model)
    return not bns or any(int(m.num_batches_tracked) > 0 for m in bns if m.num_batches_tracked is not None)


def calibrate_bn(model: nn.Module, batches: Iterable) -> nn.Module:
    """Set BatchNorm running statistics to the cumulative mean/var over ``batches`` (no weight change).

    An untrained model in eval mode has BN running stats (0, 1) on top of std-0.02 weights, so almost no
    neuron reaches threshold; after calibration it fires as it does in training, which makes firing-rate and
    spike-driven checks on untrained models meaningful.
    """
    bns = _bns(model)
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    try:
        run_observed(model, batches, train=True)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
    return model
