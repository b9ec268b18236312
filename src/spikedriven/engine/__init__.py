"""Event-driven inference engine: a trained Spike-driven Transformer run with sparse additions and bit masks.

    from spikedriven.engine import compile_model
    eng = compile_model(model, threads=2)        # BN folded, weights re-laid out, C++ (or numba) kernels
    res = eng.run(x)                             # x: [B,C,H,W] images or [B,T,C,H,W] event frames
    res.logits, res.predictions, res.counts      # counts: per-layer accumulations actually performed

Every layer whose input is spikes accumulates weight rows for the active inputs only (1x1 convs, linears and
3x3 convs); SDSA runs on token-bit-packed spikes (K AND V, popcount over tokens, threshold, AND with Q); the
encoding conv is the only dense layer. Meta-SpikeFormer (V2) models run too (``compiler_v2``, ``executor_v2``):
strided and depthwise convs on spikes as additions, the linear attention Q (K^T V) as popcounts and integer row
additions; its encoding conv and SepConv's pwconv2 (real-valued inputs) are dense. Backend ``cpp`` (the default where it builds) needs a C++ compiler and ninja,
not numba; backend ``numba`` needs ``numba`` (optional dependency, extra ``engine``), imported only when it is
chosen. See docs/engine.md.
"""
from __future__ import annotations

__all__ = ["compile_model", "EventEngine", "EngineResult", "LayerCount", "scale_thresholds", "expected_sops",
           "compare_with_model", "numba_available", "EngineBackendError", "resolve_backend"]


def numba_available() -> bool:
    """Whether numba can be imported (the ``numba`` backend); imports it if so."""
    from .executor import numba_available as available

    return available()


def _require_cpu_model(model) -> None:
    """Refuse a model that is not on the CPU with one clear line (the engine's kernels are numba / C++ CPU code)."""
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    other = sorted(str(d) for d in devices if d.type != "cpu")
    if other:
        raise ValueError(f"spikedriven.engine is a CPU engine (numba / C++ kernels) and cannot run a model on "
                         f"{', '.join(other)}; compile a CPU copy: compile_model(copy.deepcopy(model).cpu())")


def compile_model(model, threads: int | None = None, backend: str = "auto"):
    """Compile a (trained) ``SpikeDrivenTransformer`` (V1) or ``MetaSpikeFormer`` (V2) into an :class:`EventEngine`
    (eval semantics; the family decides which plan and executor: ``compiler``/``executor`` or
    ``compiler_v2``/``executor_v2``).

    BatchNorm (and V2's RepConvs) are folded into the convs; the model itself is not modified. ``threads``: threads
    used by each run (None: all cores). ``backend``: ``"cpp"`` (C++ kernels for every step, compiled on first use;
    needs a C++ compiler and ninja, not numba), ``"numba"`` (numba kernels; needs numba) or ``"auto"`` (``cpp`` if
    it builds, else ``numba`` if installed); the results are bit-identical. A backend that cannot run raises
    :class:`~spikedriven.engine.executor.EngineBackendError` (an ImportError and a RuntimeError) with one line
    saying what to install. The engine runs on the CPU only: a model with parameters or buffers on another device
    (CUDA, meta) is refused.
    """
    _require_cpu_model(model)
    from .executor import EventEngine, resolve_backend

    family = getattr(model, "family", None)
    if family not in ("sdt", "sdt_v2", "sdt_v3"):
        raise NotImplementedError(f"the event-driven engine runs the Spike-driven Transformer families 'sdt' (V1), "
                                  f"'sdt_v2' (Meta-SpikeFormer) and 'sdt_v3' (E-SpikeFormer); got "
                                  f"{type(model).__name__} (family {family!r})")
    backend = resolve_backend(backend)  # before compiling: a missing dependency fails fast
    if family == "sdt_v3":
        from .compiler_v3 import compile_plan_v3
        from .executor_v3 import EventEngineV3

        return EventEngineV3(compile_plan_v3(model), threads=threads, backend=backend)
    if family == "sdt_v2":
        from .compiler_v2 import compile_plan_v2
        from .executor_v2 import EventEngineV2

        return EventEngineV2(compile_plan_v2(model), threads=threads, backend=backend)
    from .compiler import compile_plan

    return EventEngine(compile_plan(model), threads=threads, backend=backend)


def __getattr__(name):  # lazy: `import spikedriven.engine` imports neither torch nor numba
    if name in ("EventEngine", "EngineResult", "LayerCount", "EngineBackendError", "resolve_backend"):
        from . import executor

        return getattr(executor, name)
    if name == "scale_thresholds":
        from .compiler import scale_thresholds

        return scale_thresholds
    if name in ("expected_sops", "compare_with_model", "spike_agreement"):
        from . import validate

        return getattr(validate, name)
    raise AttributeError(f"module 'spikedriven.engine' has no attribute {name!r}")
