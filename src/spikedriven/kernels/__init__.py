"""Fused multi-step LIF / PLIF neurons: one autograd Function per device, a plain-autograd reference as truth.

Public API::

    lif_multistep(x, v_threshold=1.0, tau=2.0, alpha=4.0, backend="auto", return_v=False) -> spikes
    plif_multistep(x, w, v_threshold=1.0, alpha=4.0, backend="auto", return_v=False) -> spikes
    available_backends() -> {"torch": True, "cpp": bool, "triton": bool}
    resolve_backend(x, backend="auto") -> the backend name a call with these arguments would run

``x`` has shape [T, ...] (time first), any float dtype; the neuron state is fp32 and the spikes come back in
``x.dtype``. The membrane starts at 0 inside every call (no state between calls).

Backends:

* ``"torch"``  - :mod:`spikedriven.kernels.reference`, a Python loop over T with ordinary autograd (any device,
  any float dtype). The definition of correct, and the "all fast paths off" switch.
* ``"cpp"``    - fused C++ CPU kernel (``csrc/lif_cpu.cpp``), vectorised over neurons, ``at::parallel_for`` over
  blocks of neurons, T looped inside; compiled on first use into ``$TORCH_EXTENSIONS_DIR`` (default
  ``~/.cache/torch_extensions``). fp32 / bf16 / fp16, CPU tensors.
* ``"triton"`` - fused Triton kernel for CUDA tensors (fp32 / bf16 / fp16).
* ``"auto"``   - ``cpp`` for CPU tensors if it compiled (otherwise ``torch``, after one warning), ``triton`` for
  CUDA tensors if Triton imports (otherwise ``torch``), ``torch`` for other devices and dtypes (e.g. float64),
  for empty tensors and when ``return_v=True`` (the membrane trace comes from the reference).

While a model is traced or exported (``torch.jit.trace``, ``torch.onnx.export``, ``torch.export``) every call runs
the reference whatever the backend asked for: a fused op cannot be written into the exported file, and the
reference computes the same spikes with plain tensor ops.

Environment variable ``SPIKEDRIVEN_LIF_BACKEND`` (``torch`` | ``cpp`` | ``triton`` | ``auto``): when set, it
replaces ``backend="auto"`` in every call, i.e. it forces one backend globally (e.g. ``SPIKEDRIVEN_LIF_BACKEND=torch``
turns every fast path off). A backend passed explicitly by the caller takes precedence over the variable. A forced
backend that cannot run the given tensor (``cpp`` on a CUDA tensor, ``triton`` without Triton/CUDA, a failed C++
build) raises instead of silently falling back.

Both fused backends are tables of four ops behind one autograd wrapper (:mod:`.autograd`); they save only the
(contiguous) input for backward and recompute H in the backward pass; their spikes are bit-identical to the
reference and their gradients agree with it to ~1e-7. They implement the official neuron (sigmoid surrogate,
detached reset); any other surrogate or ``detach_reset=False`` runs on the reference (``auto``) or raises (a
forced fused backend). This module is the one place that reads ``SPIKEDRIVEN_LIF_BACKEND``.
"""
from __future__ import annotations

import os

import torch

from . import _cpp, _triton, autograd
from . import integer
from .integer import integer_to_spikes, multispike_reference, quantise_int
from .reference import heaviside_sigmoid, lif_reference, plif_reference
from ..surrogate import Sigmoid, Surrogate

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "available_backends",
    "requested_backend",
    "resolve_backend",
    "fusable",
    "is_exporting",
    "lif_multistep",
    "plif_multistep",
    "lif_reference",
    "plif_reference",
    "heaviside_sigmoid",
    "multispike",
    "multispike_reference",
    "quantise_int",
    "integer_to_spikes",
]

BACKENDS = ("auto", "torch", "cpp", "triton")
ENV_VAR = "SPIKEDRIVEN_LIF_BACKEND"
_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_OPS = {"cpp": _cpp, "triton": _triton}  # fused backend -> its op table


def available_backends() -> dict[str, bool]:
    """Which backends can run here. Asking for ``cpp`` compiles the extension if that was not done yet."""
    return {"torch": True, "cpp": _cpp.load(), "triton": _triton.is_available()}


def requested_backend(backend: str = "auto") -> str:
    """``backend``, with ``auto`` replaced by ``$SPIKEDRIVEN_LIF_BACKEND`` when that is set (validated)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"{ENV_VAR}={env!r} is not one of {BACKENDS}")
            backend = env
    return backend


def fusable(surrogate: Surrogate | None = None, detach_reset: bool = True) -> bool:
    """True if the fused kernels implement this neuron (the official one: sigmoid surrogate, detached reset)."""
    return detach_reset and (surrogate is None or type(surrogate) is Sigmoid)


def resolve_backend(x: torch.Tensor, backend: str = "auto", return_v: bool = False, *,
                    surrogate: Surrogate | None = None, detach_reset: bool = True) -> str:
    """The backend that ``lif_multistep(x, backend=backend, ...)`` runs (raises if a forced one cannot)."""
    backend = requested_backend(backend)
    if is_exporting():  # a fused op cannot be exported: the reference loop is plain, exportable tensor ops
        return "torch"
    if backend == "auto":
        if return_v or x.numel() == 0 or x.dtype not in _FAST_DTYPES or not fusable(surrogate, detach_reset):
            return "torch"
        if x.device.type == "cpu":
            return "cpp" if _cpp.load() else "torch"
        if x.device.type == "cuda":
            return "triton" if _triton.is_available() else "torch"
        return "torch"
    if backend == "torch":
        return "torch"
    if not fusable(surrogate, detach_reset):
        raise ValueError(f"backend {backend!r} only implements the sigmoid surrogate with detach_reset=True; got "
                         f"surrogate={surrogate!r}, detach_reset={detach_reset}. Use backend='torch'.")
    if return_v:
        raise ValueError(f"return_v=True is only provided by the 'torch' backend, not {backend!r}")
    if x.dtype not in _FAST_DTYPES:
        raise TypeError(f"backend {backend!r} supports float32/bfloat16/float16, got {x.dtype}")
    if backend == "cpp":
        if x.device.type != "cpu":
            raise ValueError(f"backend 'cpp' needs a CPU tensor, got device {x.device}")
        if not _cpp.load():
            raise RuntimeError(f"backend 'cpp' is unavailable: the C++ build failed ({_cpp.LIF_EXT.error!r})")
        return "cpp"
    if x.device.type != "cuda":
        raise ValueError(f"backend 'triton' needs a CUDA tensor, got device {x.device}")
    if not _triton.is_available():
        raise RuntimeError(f"backend 'triton' is unavailable ({_triton._IMPORT_ERROR!r})")
    return "triton"


def is_exporting() -> bool:
    """True while a forward is traced for export (torch.export / dynamo ONNX, torch.jit.trace, TorchScript-based
    ONNX). Eager calls and ``torch.compile`` are not exporting."""
    return bool(torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def _check_x(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError("x must have a leading time dimension [T, ...]")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor, got {x.dtype}")


def lif_multistep(x: torch.Tensor, v_threshold: float = 1.0, tau: float = 2.0, alpha: float = 4.0,
                  backend: str = "auto", return_v: bool = False, *, surrogate: Surrogate | None = None,
                  detach_reset: bool = True):
    """Multi-step LIF (decay_input, hard reset to 0) on ``x`` [T, ...].

    Returns spikes shaped and typed like ``x`` (values 0/1); with ``return_v=True`` returns ``(spikes, v_seq)``
    where ``v_seq`` is the post-reset membrane potential of every step (reference backend). ``surrogate``
    (default ``Sigmoid(alpha)``) and ``detach_reset=False`` are served by the reference only.
    """
    _check_x(x)
    which = resolve_backend(x, backend, return_v, surrogate=surrogate, detach_reset=detach_reset)
    if which != "torch":
        return autograd.lif(_OPS[which], x, float(v_threshold), float(tau), float(alpha))
    return lif_reference(x, float(v_threshold), float(tau), float(alpha), return_v=return_v, surrogate=surrogate,
                         detach_reset=detach_reset)


def plif_multistep(x: torch.Tensor, w: torch.Tensor, v_threshold: float = 1.0, alpha: float = 4.0,
                   backend: str = "auto", return_v: bool = False, *, surrogate: Surrogate | None = None,
                   detach_reset: bool = True):
    """Multi-step parametric LIF, 1/tau = sigmoid(w) with ``w`` a one-element (learnable) tensor.

    Gradients flow to ``x`` and to ``w``. Same return convention as :func:`lif_multistep`.
    """
    _check_x(x)
    if not isinstance(w, torch.Tensor):
        w = torch.tensor(float(w), dtype=torch.float32, device=x.device)
    if w.numel() != 1:
        raise ValueError(f"w must hold exactly one element, got shape {tuple(w.shape)}")
    which = resolve_backend(x, backend, return_v, surrogate=surrogate, detach_reset=detach_reset)
    if which != "torch":
        return autograd.plif(_OPS[which], x, w, float(v_threshold), float(alpha))
    return plif_reference(x, w, float(v_threshold), float(alpha), return_v=return_v, surrogate=surrogate,
                          detach_reset=detach_reset)


def multispike(x: torch.Tensor, D: int = 4, norm: float = 4.0, backend: str = "auto") -> torch.Tensor:
    """``round(clamp(x, 0, D)) / norm`` with V3's gradient. Backends: ``"torch"`` the official formulation in plain
    autograd; ``"cpp"`` the fused CPU kernel (fp32/bf16/fp16); ``"auto"`` the fused kernel for CPU tensors of
    those dtypes when it builds, else elementwise torch ops that save a bool mask (CUDA, float64, a failed build).
    ``"triton"`` runs those torch ops too (no Triton kernel of its own: on a GPU they are memory-bound
    elementwise passes). All give the same values and gradients."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"multispike expects a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if is_exporting():  # plain ops: an exported graph holds no custom autograd Function or C++ op
        return torch.round(torch.clamp(x, 0, D)) / norm
    which = requested_backend(backend)
    if which == "torch":
        return integer.multispike_reference(x, D, norm)
    cpu_ok = x.device.type == "cpu" and x.dtype in integer.FAST_DTYPES and x.numel() > 0
    if which == "cpp":
        if not cpu_ok:
            raise ValueError(f"backend 'cpp' runs CPU tensors of dtype float32/bfloat16/float16, got {x.dtype} on "
                             f"{x.device}")
        if not _cpp.INT_EXT.load():
            raise RuntimeError(f"backend 'cpp' is unavailable: the C++ build failed ({_cpp.INT_EXT.error!r})")
        return integer.MultiSpikeCpp.apply(x, int(D), float(norm))
    if which == "auto" and cpu_ok and not _compiling() and _cpp.INT_EXT.load():
        return integer.MultiSpikeCpp.apply(x, int(D), float(norm))
    return integer.MultiSpikeTorch.apply(x, D, float(norm))


def _compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - old torch
        return False
