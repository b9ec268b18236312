"""The event-engine stepper: the compiled engine (``spikedriven.engine``) run on one frame per call, membranes kept.

The engine's executors run a plan layer by layer for all T steps, each neuron looping over t from a zero membrane
inside its kernel. Here the plan is compiled once with T = 1 and the executor is reused unchanged for every synaptic
layer (sparse additions on the new frame's spikes only, dense MACs for the encoding conv); the kernels that hold a
neuron (``lif_csr``, ``lif_dense``, the fused SDSA / linear-attention neurons) are replaced by :class:`StepKernels`,
which resume each neuron from its carried membrane. Their update is the kernels' own float32 arithmetic
(``H = V + (X - V) * k`` or ``/ tau``, fire on ``H >= V_th``, reset to 0; the C++ kernels are built with
``-ffp-contract=off`` and numba's with fastmath off), so a step sequence gives bit-for-bit the spikes of the batch
engine run on the same frames.

Membranes are keyed by neuron name, in the order the executor calls the neuron kernels (the plan is walked in that
order; a step that calls a different number of neuron kernels is an error, not a silent mix-up).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

__all__ = ["StepKernels", "EventStepper", "plan_neuron_names"]


def plan_neuron_names(plan) -> list:
    """The plan's neurons ``(name, Neuron)`` in the order the executor runs their kernels in one step."""
    from ..engine.compiler_v2 import AttnBlockV2, ConvBlockV2, DownV2, PlanV2

    out = []
    if isinstance(plan, PlanV2):
        for st in plan.stages:
            if isinstance(st, DownV2):
                out.append(st.lif)
            elif isinstance(st, ConvBlockV2):
                out += [st.sep_lif1, st.sep_lif2, st.lif1, st.lif2]
            elif isinstance(st, AttnBlockV2):
                out += [st.head_lif, st.q_lif, st.k_lif, st.v_lif, st.attn_lif, st.fc1_lif, st.fc2_lif]
    else:
        out += list(plan.stem_lifs)
        for b in plan.blocks:
            out += [b.shortcut_lif, b.q_lif, b.k_lif, b.v_lif, b.mask_lif, b.fc1_lif, b.fc2_lif]
    out.append(plan.head_lif)
    return [(n.name, n) for n in out]


def _charge(v, x, k, tau, divide):
    return v + (x - v) / np.float32(tau) if divide else v + (x - v) * np.float32(k)


def _pack_tokens(s: np.ndarray, B: int, N: int) -> np.ndarray:
    """Spikes ``s[B*N, C]`` (uint8/bool) -> token bits ``[1, B, C, ceil(N/64)]`` uint64 (bit n%64 of word n//64)."""
    C = s.shape[1]
    NW = (N + 63) // 64
    t = np.zeros((B, C, NW * 64), np.uint8)
    t[:, :, :N] = s.reshape(B, N, C).transpose(0, 2, 1)
    by = np.packbits(t, axis=-1, bitorder="little")
    return np.ascontiguousarray(by).view("<u8").reshape(1, B, C, NW)


def _popcount(bits: np.ndarray) -> np.ndarray:
    """Set bits per word summed over the last axis (int64)."""
    by = bits.view(np.uint8).reshape(*bits.shape[:-1], -1)
    return np.unpackbits(by, axis=-1).sum(-1, dtype=np.int64)


class StepKernels:
    """The engine's kernel set with every neuron resumed from a carried float32 membrane (one time step per call).

    Every other kernel is the wrapped one. ``slots``: ``[(name, Neuron)]`` in call order; ``state``: name -> membrane
    (rows x channels), filled on first use."""

    def __init__(self, base, slots: list, state: dict):
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_slots", slots)
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "_i", 0)
        object.__setattr__(self, "_mask_before", None)

    def __getattr__(self, name):
        return getattr(self._base, name)

    def __setattr__(self, name, value):  # the executor sets ``threads`` on the C++ kernel set
        setattr(self._base, name, value)

    def begin(self) -> None:
        object.__setattr__(self, "_i", 0)

    def end(self) -> None:
        if self._i != len(self._slots):
            raise RuntimeError(f"streaming engine: a step ran {self._i} neuron kernels, the plan has "
                               f"{len(self._slots)} neurons")

    def _next(self, vth, k):
        if self._i >= len(self._slots):
            raise RuntimeError("streaming engine: a step ran more neuron kernels than the plan has neurons")
        name, n = self._slots[self._i]
        if np.float32(vth) != n.vth or np.float32(k) != n.k:
            raise RuntimeError(f"streaming engine: neuron kernel {self._i} does not match {name}")
        object.__setattr__(self, "_i", self._i + 1)
        return name

    def _lif(self, name, x, vth, k, tau, divide):
        """One LIF step of ``x[R, C]`` from the membrane ``state[name]``: spikes (bool)."""
        v = self.state.get(name)
        if v is None:
            v = np.zeros(x.shape, np.float32)
        elif v.shape != x.shape:
            raise ValueError(f"the carried membrane of {name} has shape {list(v.shape)} but this step brings "
                             f"{list(x.shape)}: a different batch size or frame size than the steps before (call "
                             f"reset() first)")
        h = _charge(v, x.astype(np.float32, copy=False), k, tau, divide)
        s = h >= np.float32(vth)
        self.state[name] = np.where(s, np.float32(0.0), h).astype(np.float32, copy=False)
        return s

    @staticmethod
    def _to_csr(s, idx, cnt):
        r, c = np.nonzero(s)
        counts = s.sum(1, dtype=np.int64)
        cnt[:] = counts
        start = np.concatenate(([0], np.cumsum(counts)[:-1]))
        idx[r, np.arange(len(r)) - start[r]] = c

    # ---------------------------------------------------------------- neuron kernels (T = 1)
    def lif_csr(self, x, T, vth, k, tau, divide, idx, cnt):
        s = self._lif(self._next(vth, k), x[0], vth, k, tau, divide)
        self._to_csr(s, idx, cnt)

    def lif_dense(self, x, T, vth, k, tau, divide, s):
        s[0] = self._lif(self._next(vth, k), x[0], vth, k, tau, divide)

    def _qkv(self, p, B, N, D, vq, kq, tq, vk, kk, tk, vv, kv_, tv, divide, qbits, kbits, vbits):
        out = []
        for j, (vth, k, tau, bits) in enumerate(((vq, kq, tq, qbits), (vk, kk, tk, kbits), (vv, kv_, tv, vbits))):
            s = self._lif(self._next(vth, k), p[0, :, j * D:(j + 1) * D], vth, k, tau, divide)
            bits[...] = _pack_tokens(s, B, N)
            out.append(s)
        return out

    def _mask(self, name, qbits, kvbits, vth, k, tau, divide, ybits, mask):
        counts = _popcount(kvbits[0]).astype(np.float32)  # [B, D] tokens where K and V both fired
        m = self._lif(name, counts, vth, k, tau, divide)
        mask[0] = m
        ybits[0] = np.where(m[..., None], qbits[0], np.uint64(0))

    def qkv_lif_sdsa(self, p, T, B, N, D, vq, kq, tq, vk, kk, tk, vv, kv_, tv, vm, km, tm, divide, qbits, kbits,
                     vbits, ybits, mask):
        self._qkv(p, B, N, D, vq, kq, tq, vk, kk, tk, vv, kv_, tv, divide, qbits, kbits, vbits)
        name = self._next(vm, km)
        object.__setattr__(self, "_mask_before", (name, self.state.get(name)))
        self._mask(name, qbits, np.bitwise_and(kbits, vbits), vm, km, tm, divide, ybits, mask)

    def sdsa_mask(self, qbits, kvbits, vth_m, k_m, tau_m, divide, ybits, mask):
        # dvs_mode: the executor replaces the mask qkv_lif_sdsa just made by one from the eroded K&V, so the
        # mask neuron resumes from its membrane before that call
        name, before = self._mask_before
        if before is None:
            self.state.pop(name, None)
        else:
            self.state[name] = before
        self._mask(name, qbits, kvbits, vth_m, k_m, tau_m, divide, ybits, mask)

    def qkv_lif_bits(self, p, T, B, N, D, vq, kq, tq, vk, kk, tk, vv, kv_, tv, divide, qbits, kbits, vbits):
        self._qkv(p, B, N, D, vq, kq, tq, vk, kk, tk, vv, kv_, tv, divide, qbits, kbits, vbits)

    def q_rows_lif(self, qidx, qcnt, kv, N, vth, k, tau, divide, yidx, ycnt):
        _, B, nh, d, _ = kv.shape
        R, D = qidx.shape[0], nh * d
        q = np.zeros((R, D), np.int64)
        r, j = np.nonzero(np.arange(qidx.shape[1])[None, :] < qcnt[:, None])
        q[r, qidx[r, j]] = 1
        # X[b, n, h, :] = sum over active lanes i of head h of kv[b, h, i, :] (integer rows; exact in float32)
        X = np.einsum("bnhi,bhij->bnhj", q.reshape(B, N, nh, d), kv[0].astype(np.int64)).reshape(R, D)
        s = self._lif(self._next(vth, k), X.astype(np.float32), vth, k, tau, divide)
        self._to_csr(s, yidx, ycnt)


class EventStepper:
    """The event engine compiled once with T = 1 and run on one frame per call with :class:`StepKernels`.

    ``step(frame)`` -> ``(outputs, counts)``: per-step head outputs (``{"head": [B, K]}``, ``"head_kd"`` for a V2
    kd model, ``{"features": [B, D]}`` without a classifier) and the engine's per-layer counts of this step."""

    def __init__(self, model, threads: int | None = None, backend: str = "auto"):
        from ..engine import _require_cpu_model
        from ..engine.executor import resolve_backend

        _require_cpu_model(model)
        family = getattr(model, "family", None)
        if family not in ("sdt", "sdt_v2"):
            raise ValueError(f"streaming runs the families 'sdt' (V1) and 'sdt_v2' (V2), which carry membranes "
                             f"from one time step to the next (V3's base models take one image at one step); got "
                             f"{type(model).__name__} (family {family!r})")
        backend = resolve_backend(backend)
        if family == "sdt_v2":
            from ..engine.compiler_v2 import compile_plan_v2
            from ..engine.executor_v2 import EventEngineV2 as Engine

            plan = compile_plan_v2(model)
        else:
            from ..engine.compiler import compile_plan
            from ..engine.executor import EventEngine as Engine

            plan = compile_plan(model)
        self.T_batch = plan.T
        plan = replace(plan, T=1)
        heads = [plan.head] if family == "sdt" else list(plan.heads)
        self.head_names = {id(h): key for h, key in zip((h for h in heads if h is not None), ("head", "head_kd"))}
        self.state: dict[str, np.ndarray] = {}
        self.slots = plan_neuron_names(plan)
        eng = Engine(plan, threads=threads, backend=backend)
        eng.K = StepKernels(eng.K, self.slots, self.state)
        outputs = self._outputs = {}
        heads_by_id = self.head_names
        base_linear = eng._linear

        def linear(idx, cnt, lin, resid=None):  # catch each head's output of the step (kd: two heads)
            out = base_linear(idx, cnt, lin, resid)
            if id(lin) in heads_by_id:
                outputs[heads_by_id[id(lin)]] = out.copy()
            return out

        eng._linear = linear
        self.engine, self.plan, self.family = eng, plan, family
        self.names = [n for n, _ in self.slots]

    def step(self, frame: np.ndarray):
        self._outputs.clear()
        K = self.engine.K
        K.begin()
        res = self.engine.run(np.asarray(frame, np.float32)[:, None])
        K.end()
        if not self._outputs:  # no classifier: the head spikes are the output
            return {"features": res.logits.reshape(res.logits.shape[-2:])}, res.counts
        return dict(self._outputs), res.counts
