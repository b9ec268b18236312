"""CPU backend: the C++ kernel in ``csrc/lif_cpu.cpp``, compiled on first use; its ops feed ``kernels.autograd``.
(``csrc/engine_cpu.cpp``, the event engine's kernels, is built by the same :class:`CppExtension` machinery, as a
Python module whose functions take numpy arrays.)

The extension is built with :func:`torch.utils.cpp_extension.load` (needs a C++ compiler and ``ninja``) into
``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions/...``). The build name contains a hash of the
source and of the compiler flags plus the CPU capability torch reports, so editing the source or moving the cache
to another kind of CPU triggers a rebuild instead of loading a stale or illegal binary. If the build fails the
backend is reported unavailable and ``auto`` falls back to the plain torch reference with a single warning.

Why C++ rather than ``torch.compile`` (inductor) on CPU -- measured with ``benchmarks/bench_lif.py`` on the project
machine (2 cores, AVX-512, [4, 16*512*16*16], same process): fwd+bwd fp32 13.2 ms (C++) vs 26.5 ms (inductor on the
reference), bf16 6.4 ms vs 12.7 ms; the forward alone is on par in fp32 and 5x faster in bf16 (0.7 vs 3.6 ms). The
compiled graph also costs ~20 s of compilation per new shape / dtype / grad mode on 2 cores (a model has many LIF
shapes), and its backward saves H instead of recomputing it in cache. The C++ kernel is one ~10 s build, cached
across runs, and bit-exact by construction (-ffp-contract=off). At this size both are dominated by page faults on
freshly mapped 32 MiB outputs, see ``empty_output`` in the C++ source.
"""
from __future__ import annotations

import hashlib
import threading
import warnings
from pathlib import Path

import torch

_CSRC = Path(__file__).with_name("csrc")

# -fno-trapping-math lets gcc if-convert the `h >= v_th` selects; without it gcc 12 vectorises the loops only when
# AVX-512 masking is available and leaves them scalar on AVX2 machines (measured 7x slower on an AMD EPYC).
# It changes no rounding (no reassociation, no contraction), so the kernels stay bit-exact.
_BASE_CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]


def _arch_flags() -> list[str]:
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        cap = "DEFAULT"
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    if cap.startswith("AVX512"):
        return ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"]
    if cap.startswith("AVX2"):
        return ["-mavx2", "-mfma", "-mf16c"]
    return []


def _import_cpp_extension():
    """``torch.utils.cpp_extension``, without the "No CUDA runtime is found" warning its import logs on machines
    with a CUDA build of torch and no GPU (it concerns CUDA extensions; these are CPU ones)."""
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


class CppExtension:
    """One C++ source in ``csrc/`` that registers ``torch.ops.<namespace>`` or, with ``python_module=True``, is a
    Python module (``.module`` after :meth:`load`; ``namespace`` is then only a label), compiled on first use and
    cached. ``probe_op``: an operator / function the build must provide.

    The build name holds a hash of the source, the flags, the torch version and the CPU capability, so an edited
    source or a cache moved to another kind of CPU rebuilds instead of loading a stale or illegal binary.
    """

    def __init__(self, source: str, namespace: str, probe_op: str, what: str, fallback: str,
                 python_module: bool = False, extra_sources: tuple[str, ...] = (), headers: tuple[str, ...] = ()):
        self.src = _CSRC / source
        self.extra_sources = [_CSRC / s for s in extra_sources]  # more translation units of the same module
        self.headers = [_CSRC / s for s in headers]  # included by the sources: part of the build hash
        self.namespace, self.probe_op, self.what, self.fallback = namespace, probe_op, what, fallback
        self.python_module = python_module
        self.module = None
        self._lock = threading.Lock()
        self.tried = self.ok = False
        self.error: BaseException | None = None

    def _build_name(self, cflags: list[str]) -> str:
        h = hashlib.sha256()
        for f in (self.src, *self.extra_sources, *self.headers):
            h.update(f.read_bytes())
            h.update(str(f.resolve()).encode())  # torch records the source path: one build per checkout
        h.update(" ".join(cflags).encode())
        h.update(torch.__version__.encode())
        try:
            cap = torch.backends.cpu.get_cpu_capability()
        except Exception:  # pragma: no cover
            cap = "DEFAULT"
        return f"spikedriven_{self.src.stem}_{cap.lower()}_{h.hexdigest()[:12]}"

    def _build(self, verbose: bool = False) -> None:
        if self.python_module:
            if self.module is not None:
                return
        else:
            ns = getattr(torch.ops, self.namespace, None)
            if ns is not None and hasattr(ns, self.probe_op):
                return  # already registered in this process
        cpp_extension = _import_cpp_extension()
        for f in (self.src, *self.extra_sources, *self.headers):
            if not f.is_file():
                raise FileNotFoundError(f"C++ source not found: {f} (package data missing?)")
        cflags = _BASE_CFLAGS + _arch_flags()
        sources = [str(f) for f in (self.src, *self.extra_sources)]
        mod = cpp_extension.load(name=self._build_name(cflags), sources=sources, extra_cflags=cflags,
                                 extra_ldflags=["-fopenmp"], is_python_module=self.python_module, verbose=verbose)
        if self.python_module:
            if not hasattr(mod, self.probe_op):
                raise RuntimeError(f"{self.src.name}: the built module has no {self.probe_op!r}")
            self.module = mod

    def load(self, verbose: bool = False) -> bool:
        """Build/load once per process. True if the operators are usable; on failure warns once
        (RuntimeWarning) and returns False from then on."""
        if self.tried:
            return self.ok
        with self._lock:
            if self.tried:
                return self.ok
            try:
                self._build(verbose)
                self.ok = True
            except Exception as exc:  # no compiler, no ninja, broken toolchain, ...
                self.ok, self.error = False, exc
                last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
                warnings.warn(f"spikedriven.kernels: could not build the C++ {self.what}, falling back to "
                              f"{self.fallback} ({type(exc).__name__}: {last})", RuntimeWarning, stacklevel=3)
            self.tried = True
        return self.ok


LIF_EXT = CppExtension("lif_cpu.cpp", "spikedriven_lif", "lif_fwd", "LIF kernel", "the torch reference on CPU")
INT_EXT = CppExtension("multispike_cpu.cpp", "spikedriven_int", "multispike_fwd", "integer-neuron kernel",
                       "the torch implementation")
ENGINE_EXT = CppExtension("engine_cpu.cpp", "spikedriven_engine", "q_rows_lif", "event-engine kernels",
                          "the numba kernels if numba is installed", python_module=True,
                          extra_sources=("engine_v2_cpu.cpp",), headers=("engine_common.h",))


def load(verbose: bool = False) -> bool:
    """Build/load the LIF extension (see :meth:`CppExtension.load`)."""
    return LIF_EXT.load(verbose)


# ---- the backend's op table (see kernels.autograd): [T, N] contiguous tensors in, tensors out
def lif_forward(x2: torch.Tensor, v_threshold: float, tau: float, needs_grad: bool) -> torch.Tensor:
    return torch.ops.spikedriven_lif.lif_fwd(x2, v_threshold, tau, needs_grad)


def lif_backward(x2: torch.Tensor, gs: torch.Tensor, v_threshold: float, tau: float, alpha: float) -> torch.Tensor:
    return torch.ops.spikedriven_lif.lif_bwd(x2, gs, v_threshold, tau, alpha)


def plif_forward(x2: torch.Tensor, v_threshold: float, k: float, needs_grad: bool) -> torch.Tensor:
    return torch.ops.spikedriven_lif.plif_fwd(x2, v_threshold, k, needs_grad)


def plif_backward(x2, gs, v_threshold: float, k: float, alpha: float):
    """(gx, dL/dk)."""
    return torch.ops.spikedriven_lif.plif_bwd(x2, gs, v_threshold, k, alpha)
