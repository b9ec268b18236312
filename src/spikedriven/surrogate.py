"""Surrogate gradients: the spike is a Heaviside step forward and a smooth stand-in's derivative backward.

A surrogate is a small value object (``Sigmoid(alpha=4)`` is the official one) passed to a neuron; the one
autograd function :func:`spike_fn` applies it. The fused kernels implement ``Sigmoid`` only.
"""
from __future__ import annotations

import math

import torch

__all__ = ["Surrogate", "Sigmoid", "ATan", "Triangle", "spike_fn"]


class Surrogate:
    """Base class. Subclasses define ``derivative(x)`` of a smooth stand-in for Heaviside(x)."""

    name = "surrogate"

    def __init__(self, alpha: float):
        if not alpha > 0:
            raise ValueError(f"surrogate alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return spike_fn(x, self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha:g})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.alpha == other.alpha

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.alpha))


class Sigmoid(Surrogate):
    """sigma(alpha x) as the smooth step; derivative alpha*s*(1-s), peak alpha/4 at 0 (SpikingJelly default)."""

    name = "sigmoid"

    def __init__(self, alpha: float = 4.0):
        super().__init__(alpha)

    def derivative(self, x):
        s = torch.sigmoid(self.alpha * x)
        return self.alpha * s * (1 - s)


class ATan(Surrogate):
    """(1/pi) arctan(pi/2 alpha x) + 1/2; derivative alpha / (2 (1 + (pi/2 alpha x)^2))."""

    name = "atan"

    def __init__(self, alpha: float = 2.0):
        super().__init__(alpha)

    def derivative(self, x):
        return self.alpha / 2 / (1 + (math.pi / 2 * self.alpha * x) ** 2)


class Triangle(Surrogate):
    """Piecewise-linear: derivative max(0, alpha - alpha^2 |x|), support |x| < 1/alpha."""

    name = "triangle"

    def __init__(self, alpha: float = 1.0):
        super().__init__(alpha)

    def derivative(self, x):
        return (self.alpha - self.alpha**2 * x.abs()).clamp_min(0)


class _SpikeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ctx.surrogate.derivative(x), None


def spike_fn(x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    """Heaviside (x >= 0) forward, ``surrogate.derivative`` backward."""
    if torch.jit.is_tracing() or torch.compiler.is_exporting():  # a traced file holds no Python autograd Function
        return (x >= 0).to(x.dtype)  # the same forward values; an exported model is for inference
    return _SpikeFn.apply(x, surrogate)
