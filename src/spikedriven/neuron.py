"""Multi-step spiking neurons used by the Spike-driven Transformer.

All neurons take a time-major tensor ``[T, ...]`` and return spikes of the same shape and dtype.
They are *stateless* from the caller's side: the membrane starts at ``v_reset = 0`` inside every call,
so there is no ``reset_net`` to forget between batches (the official code needs one after each step).

LIF dynamics (official SDT / SpikingJelly ``MultiStepLIFNode(tau=2., detach_reset=True)``)::

    H[t] = V[t-1] + (X[t] - V[t-1]) / tau        # charge, decay_input=True, V_reset = 0
    S[t] = Heaviside(H[t] - V_th)                 # fire on H >= V_th
    V[t] = H[t] * (1 - S[t])                      # hard reset to 0, S detached

The backward pass replaces dS/dH with a surrogate derivative (default: sigmoid, alpha = 4).
"""
from __future__ import annotations

import math
import os

import torch
from torch import nn

__all__ = [
    "Surrogate",
    "Sigmoid",
    "ATan",
    "Triangle",
    "spike_fn",
    "lif_multistep_reference",
    "plif_multistep_reference",
    "LIF",
    "ParametricLIF",
    "make_neuron",
]


# --------------------------------------------------------------------------------------------------
# Surrogate functions: small swappable objects (forward = Heaviside, backward = derivative())
# --------------------------------------------------------------------------------------------------
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
    return _SpikeFn.apply(x, surrogate)


# --------------------------------------------------------------------------------------------------
# Reference (plain autograd) multi-step dynamics: readable, any surrogate, the ground truth for kernels
# --------------------------------------------------------------------------------------------------
def lif_multistep_reference(
    x: torch.Tensor,
    v_threshold: float = 1.0,
    tau: float = 2.0,
    surrogate: Surrogate | None = None,
    detach_reset: bool = True,
    return_v: bool = False,
):
    """Multi-step LIF by a Python loop over T. Returns spikes (and post-reset V if ``return_v``)."""
    surrogate = surrogate or Sigmoid()
    xs = x.float()  # neuron state in fp32 even under bf16/fp16 autocast
    v = torch.zeros_like(xs[0])
    spikes, vs = [], []
    for t in range(xs.shape[0]):
        h = v + (xs[t] - v) / tau
        s = spike_fn(h - v_threshold, surrogate)
        s_reset = s.detach() if detach_reset else s
        v = h * (1 - s_reset)
        spikes.append(s)
        vs.append(v)
    out = torch.stack(spikes).to(x.dtype)
    return (out, torch.stack(vs)) if return_v else out


def plif_multistep_reference(
    x: torch.Tensor,
    w: torch.Tensor,
    v_threshold: float = 1.0,
    surrogate: Surrogate | None = None,
    detach_reset: bool = True,
):
    """Parametric LIF (Fang et al. 2021): 1/tau = sigmoid(w), w learnable."""
    surrogate = surrogate or Sigmoid()
    k = torch.sigmoid(w.float())
    xs = x.float()
    v = torch.zeros_like(xs[0])
    spikes = []
    for t in range(xs.shape[0]):
        h = v + (xs[t] - v) * k
        s = spike_fn(h - v_threshold, surrogate)
        v = h * (1 - (s.detach() if detach_reset else s))
        spikes.append(s)
    return torch.stack(spikes).to(x.dtype)


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------
_VALID_BACKENDS = ("auto", "torch", "cpp", "triton")


def _default_backend() -> str:
    return os.environ.get("SPIKEDRIVEN_LIF_BACKEND", "auto")


def _kernels():
    """The fused-kernel package, or None if it is not importable (then the reference loop is used)."""
    try:
        from . import kernels
    except ImportError:  # pragma: no cover - only in stripped-down installs
        return None
    return kernels


def _storage_order_call(fn, x: torch.Tensor) -> torch.Tensor:
    """Run an elementwise-over-neurons kernel on ``x`` in its storage order (no copy for NHWC activations).

    A channels_last activation ``[T,B,C,H,W]`` is a permutation of a contiguous tensor; the kernel sees that
    contiguous view and the result (and its gradient) is permuted back, so the layout is preserved end to end.
    """
    if x.is_contiguous() or x.ndim < 3:
        return fn(x)
    order = sorted(range(1, x.ndim), key=lambda d: (-x.stride(d), d))
    perm = [0, *order]
    xp = x.permute(perm)
    if not xp.is_contiguous() or x.stride(0) < max(x.stride()[1:]):
        return fn(x)
    inv = [perm.index(d) for d in range(x.ndim)]
    return fn(xp).permute(inv)


class LIF(nn.Module):
    """Multi-step LIF neuron on ``[T, ...]`` tensors; no parameters, no buffers, no state between calls.

    backend: "auto" (fused kernel when the surrogate is the default sigmoid and one is available for the
    device), "torch" (reference loop, any surrogate), "cpp" or "triton" (force a fused kernel).
    """

    def __init__(
        self,
        v_threshold: float = 1.0,
        tau: float = 2.0,
        surrogate: Surrogate | None = None,
        detach_reset: bool = True,
        backend: str | None = None,
    ):
        super().__init__()
        if not tau > 1.0:
            raise ValueError(f"LIF tau must be > 1 (the membrane decays by 1/tau per step), got {tau}")
        backend = backend or _default_backend()
        if backend not in _VALID_BACKENDS:
            raise ValueError(f"LIF backend must be one of {_VALID_BACKENDS}, got {backend!r}")
        self.v_threshold = float(v_threshold)
        self.tau = float(tau)
        self.surrogate = surrogate or Sigmoid()
        self.detach_reset = detach_reset
        self.backend = backend

    def _fusable(self) -> bool:
        return self.detach_reset and type(self.surrogate) is Sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = _kernels() if self.backend != "torch" and self._fusable() else None
        if kernels is not None:
            return _storage_order_call(lambda t: kernels.lif_multistep(
                t, v_threshold=self.v_threshold, tau=self.tau, alpha=self.surrogate.alpha, backend=self.backend), x)
        if self.backend in ("cpp", "triton"):
            raise ValueError(
                f"LIF backend {self.backend!r} only supports the sigmoid surrogate with detach_reset=True; "
                f"got surrogate={self.surrogate!r}, detach_reset={self.detach_reset}. Use backend='torch'."
            )
        return lif_multistep_reference(x, self.v_threshold, self.tau, self.surrogate, self.detach_reset)

    def extra_repr(self) -> str:
        return f"v_threshold={self.v_threshold:g}, tau={self.tau:g}, surrogate={self.surrogate!r}, backend={self.backend}"


class ParametricLIF(nn.Module):
    """Multi-step parametric LIF: learnable scalar ``w`` with 1/tau = sigmoid(w) (state_dict key ``<name>.w``)."""

    def __init__(
        self,
        v_threshold: float = 1.0,
        init_tau: float = 2.0,
        surrogate: Surrogate | None = None,
        detach_reset: bool = True,
        backend: str | None = None,
    ):
        super().__init__()
        if not init_tau > 1.0:
            raise ValueError(f"ParametricLIF init_tau must be > 1, got {init_tau}")
        self.v_threshold = float(v_threshold)
        self.surrogate = surrogate or Sigmoid()
        self.detach_reset = detach_reset
        self.backend = backend or _default_backend()
        # sigmoid(w) = 1/init_tau  <=>  w = -ln(init_tau - 1)
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    @property
    def tau(self) -> float:
        return float(1.0 / torch.sigmoid(self.w.detach()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fusable = self.backend != "torch" and self.detach_reset and type(self.surrogate) is Sigmoid
        kernels = _kernels() if fusable else None
        if kernels is not None:
            return _storage_order_call(lambda t: kernels.plif_multistep(
                t, self.w, v_threshold=self.v_threshold, alpha=self.surrogate.alpha, backend=self.backend), x)
        return plif_multistep_reference(x, self.w, self.v_threshold, self.surrogate, self.detach_reset)

    def extra_repr(self) -> str:
        return f"v_threshold={self.v_threshold:g}, tau={self.tau:.4g}, surrogate={self.surrogate!r}"


def make_neuron(spike_mode: str = "lif", v_threshold: float = 1.0, backend: str | None = None) -> nn.Module:
    """Neuron factory used by the model: ``spike_mode`` "lif" (official default) or "plif"."""
    if spike_mode == "lif":
        return LIF(v_threshold=v_threshold, tau=2.0, backend=backend)
    if spike_mode == "plif":
        return ParametricLIF(v_threshold=v_threshold, init_tau=2.0, backend=backend)
    raise ValueError(f"spike_mode must be 'lif' or 'plif', got {spike_mode!r}")
