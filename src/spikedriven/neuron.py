"""Multi-step spiking neurons: a base class that declares its backends, LIF and parametric LIF.

All neurons take a time-major tensor ``[T, ...]`` and return spikes of the same shape and dtype.
They are *stateless* from the caller's side: the membrane starts at ``v_reset = 0`` inside every call,
so there is no ``reset_net`` to forget between batches (the official code needs one after each step).

LIF dynamics (official SDT / SpikingJelly ``MultiStepLIFNode(tau=2., detach_reset=True)``)::

    H[t] = V[t-1] + (X[t] - V[t-1]) / tau        # charge, decay_input=True, V_reset = 0
    S[t] = Heaviside(H[t] - V_th)                 # fire on H >= V_th
    V[t] = H[t] * (1 - S[t])                      # hard reset to 0, S detached

The backward pass replaces dS/dH with a surrogate derivative (default: sigmoid, alpha = 4).

Backends (see :mod:`spikedriven.kernels`): every neuron has a ``backend`` attribute, ``"auto"`` by default, and
declares ``supported_backends``; :func:`set_backend` switches a whole model, :func:`neurons` lists its neurons.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import kernels
from .kernels.reference import lif_reference, plif_reference
from .surrogate import ATan, Sigmoid, Surrogate, Triangle, spike_fn

__all__ = [
    "Surrogate", "Sigmoid", "ATan", "Triangle", "spike_fn", "lif_multistep_reference", "plif_multistep_reference",
    "Neuron", "SpikingNeuron", "LIF", "ParametricLIF", "IntegerNeuron", "NEURON_TYPES", "make_neuron",
    "set_backend", "neurons",
]


def lif_multistep_reference(x: torch.Tensor, v_threshold: float = 1.0, tau: float = 2.0,
                            surrogate: Surrogate | None = None, detach_reset: bool = True, return_v: bool = False):
    """The reference multi-step LIF (:func:`spikedriven.kernels.reference.lif_reference`) with any surrogate."""
    return lif_reference(x, v_threshold, tau, return_v=return_v, surrogate=surrogate, detach_reset=detach_reset)


def plif_multistep_reference(x: torch.Tensor, w: torch.Tensor, v_threshold: float = 1.0,
                             surrogate: Surrogate | None = None, detach_reset: bool = True):
    """The reference multi-step parametric LIF (1/tau = sigmoid(w))."""
    return plif_reference(x, w, v_threshold, surrogate=surrogate, detach_reset=detach_reset)


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


class Neuron(nn.Module):
    """Base of every neuron type (binary LIF neurons and V3's integer neuron): a ``backend`` and the
    ``supported_backends`` it may be switched to (:func:`set_backend` switches a whole model)."""

    def __init__(self, backend: str | None = None):
        super().__init__()
        self.backend = "auto"
        self.set_backend(backend or "auto")

    @property
    def supported_backends(self) -> tuple[str, ...]:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_backend(self, backend: str) -> "Neuron":
        if backend not in kernels.BACKENDS:
            raise ValueError(f"neuron backend must be one of {kernels.BACKENDS}, got {backend!r}")
        if backend not in self.supported_backends:
            raise ValueError(f"{type(self).__name__} ({self.extra_repr()}) supports backends "
                             f"{self.supported_backends}, not {backend!r}")
        self.backend = backend
        return self


class SpikingNeuron(Neuron):
    """Base of every binary spiking neuron: threshold, surrogate, detached reset and a ``backend``.

    ``backend`` is "auto" (the fused kernel for the tensor's device when this neuron is fusable, else the
    reference; ``$SPIKEDRIVEN_LIF_BACKEND`` overrides "auto"), "torch" (reference loop), "cpp" or "triton".
    ``supported_backends`` says which of them can run this neuron; asking for another one raises.
    """

    def __init__(self, v_threshold: float = 1.0, surrogate: Surrogate | None = None, detach_reset: bool = True,
                 backend: str | None = None):
        self.v_threshold = float(v_threshold)
        self.surrogate = surrogate or Sigmoid()
        self.detach_reset = bool(detach_reset)
        super().__init__(backend)

    @property
    def supported_backends(self) -> tuple[str, ...]:
        """Backends that implement this neuron's configuration (fused kernels: the official sigmoid + detach)."""
        if kernels.fusable(self.surrogate, self.detach_reset):
            return ("auto", "torch", "cpp", "triton")
        return ("auto", "torch")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _storage_order_call(self._multistep, x)

    def _multistep(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"v_threshold={self.v_threshold:g}, surrogate={self.surrogate!r}, backend={self.backend}"


class LIF(SpikingNeuron):
    """Multi-step LIF neuron on ``[T, ...]`` tensors; no parameters, no buffers, no state between calls."""

    def __init__(self, v_threshold: float = 1.0, tau: float = 2.0, surrogate: Surrogate | None = None,
                 detach_reset: bool = True, backend: str | None = None):
        if not tau > 1.0:
            raise ValueError(f"LIF tau must be > 1 (the membrane decays by 1/tau per step), got {tau}")
        self.tau = float(tau)
        super().__init__(v_threshold, surrogate, detach_reset, backend)

    def _multistep(self, x):
        return kernels.lif_multistep(x, self.v_threshold, self.tau, self.surrogate.alpha, self.backend,
                                     surrogate=self.surrogate, detach_reset=self.detach_reset)

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}, " + super().extra_repr()


class ParametricLIF(SpikingNeuron):
    """Multi-step parametric LIF: learnable scalar ``w`` with 1/tau = sigmoid(w) (state_dict key ``<name>.w``)."""

    def __init__(self, v_threshold: float = 1.0, init_tau: float = 2.0, surrogate: Surrogate | None = None,
                 detach_reset: bool = True, backend: str | None = None):
        if not init_tau > 1.0:
            raise ValueError(f"ParametricLIF init_tau must be > 1, got {init_tau}")
        super().__init__(v_threshold, surrogate, detach_reset, backend)
        # sigmoid(w) = 1/init_tau  <=>  w = -ln(init_tau - 1)
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    @property
    def tau(self) -> float:
        return float(1.0 / torch.sigmoid(self.w.detach()))

    def _multistep(self, x):
        return kernels.plif_multistep(x, self.w, self.v_threshold, self.surrogate.alpha, self.backend,
                                      surrogate=self.surrogate, detach_reset=self.detach_reset)

    def extra_repr(self) -> str:
        return f"tau={self.tau:.4g}, " + super().extra_repr()


class IntegerNeuron(Neuron):
    """V3's integer neuron ("MultiSpike", Spike Firing Approximation): ``round(clamp(x, 0, D)) / norm``.

    Trained at one time step with integer activations 0..D; the gradient passes unchanged (times 1/norm) where
    ``0 <= x <= D`` and is zero outside. ``norm`` defaults to D (outputs in [0, 1]); V3's last neuron before the
    head has ``norm=1`` (the head sees the integers). No membrane, no time: any input shape.

    Spike-driven form: with ``expand = True`` the neuron emits its integer v as D binary spikes over D virtual
    steps (the first v fire), stacked on a new leading axis and folded into dim 0: ``[D * N, ...]`` for an input
    ``[N, ...]``. A layer fed by it sums its D per-step outputs (:class:`spikedriven.models.sdt_v3.VirtualSteps`),
    which gives ``layer(v / norm)`` exactly, since the layer is linear in its input.
    """

    def __init__(self, D: int = 4, norm: float | None = None, backend: str | None = None):
        if not (isinstance(D, int) and not isinstance(D, bool) and D >= 1):
            raise ValueError(f"IntegerNeuron D (the largest integer, = virtual time steps) must be an int >= 1, "
                             f"got {D!r}")
        norm = D if norm is None else norm
        if not (isinstance(norm, (int, float)) and not isinstance(norm, bool) and math.isfinite(norm) and norm > 0):
            raise ValueError(f"IntegerNeuron norm must be a finite number > 0, got {norm!r}")
        self.D, self.norm = D, float(norm)
        self.expand = False
        super().__init__(backend)

    @property
    def supported_backends(self) -> tuple[str, ...]:
        return ("auto", "torch", "cpp", "triton")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.expand:
            return kernels.integer_to_spikes(kernels.quantise_int(x, self.D), self.D)
        return kernels.multispike(x, self.D, self.norm, self.backend)

    def extra_repr(self) -> str:
        return f"D={self.D}, norm={self.norm:g}, backend={self.backend}" + (", expand" if self.expand else "")


NEURON_TYPES: dict[str, type[Neuron]] = {"lif": LIF, "plif": ParametricLIF, "integer": IntegerNeuron}


def make_neuron(spike_mode: str = "lif", v_threshold: float = 1.0, backend: str | None = None) -> SpikingNeuron:
    """Neuron factory used by the V1 models: ``spike_mode`` "lif" (official default) or "plif"."""
    if spike_mode == "lif":
        return LIF(v_threshold=v_threshold, tau=2.0, backend=backend)
    if spike_mode == "plif":
        return ParametricLIF(v_threshold=v_threshold, init_tau=2.0, backend=backend)
    raise ValueError(f"spike_mode must be 'lif' or 'plif', got {spike_mode!r}")


def neurons(model: nn.Module) -> list[tuple[str, Neuron]]:
    """``(name, module)`` of every neuron (binary or integer) in ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Neuron)]


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every neuron of ``model`` to ``backend`` (checked against each neuron's ``supported_backends``)."""
    if backend not in kernels.BACKENDS:
        raise ValueError(f"neuron backend must be one of {kernels.BACKENDS}, got {backend!r}")
    for _, m in neurons(model):
        m.set_backend(backend)
    return model
