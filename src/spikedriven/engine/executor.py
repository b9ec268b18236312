"""The event-driven executor: runs a compiled ``Plan`` on a batch with sparse additions and bit masks only.

Execution is layer-major: each layer is computed for all T steps and all samples at once (rows (t, b, token)),
then its neuron runs sequentially over t per neuron. This is exactly the per-time-step semantics of the model
(the network has no feedback across layers, so layer l at step t depends on layers < l at steps <= t only) and
gives every kernel T*B*N independent rows to spread over threads.

Kernels: backend ``cpp`` runs every step through ``cpp_kernels.CppKernels`` (C++, no numba), backend ``numba``
through the numba module ``kernels`` (imported only then); both have the same functions and give bit-identical
results.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .compiler import Conv3x3, Linear, Neuron, Plan

__all__ = ["LayerCount", "EngineResult", "EventEngine", "BACKENDS", "resolve_backend", "EngineBackendError",
           "numba_available"]

_NO_RES = np.zeros((0, 0), np.float32)


@dataclass
class LayerCount:
    """Work of one layer on one batch (totals over the batch and all time steps).

    kind "mac": dense multiply-accumulates (encoding layer); "sop": event-driven additions; "bitop": SDSA
    64-bit word operations (AND + popcount + mask), no synaptic weights involved.

    ``acc``: operations the kernel actually performed (for "sop": weight elements added; 3x3 taps that fall
    in the zero padding are skipped, so they are not performed). ``nominal``: the same count with padding
    taps included = active inputs x k^2 x Cout, which is exactly T x fr_in x FLOPs x B of the energy report
    (FLOPs = k^2 H_out W_out C_in C_out). For 1x1 convs and linears acc == nominal.
    """

    name: str
    kind: str
    active_inputs: int  # spikes entering the layer (sum over T, B, positions, channels); -1 for "mac"
    input_neurons: int  # T x B x H x W x Cin (the rate denominator)
    fanout: int  # k^2 x Cout
    acc: int
    nominal: int

    @property
    def rate(self) -> float:
        return self.active_inputs / self.input_neurons if self.input_neurons and self.active_inputs >= 0 else float("nan")


@dataclass
class EngineResult:
    logits: np.ndarray  # [B, K] ([T, B, K] for tet models; [B, D] mean head spikes if num_classes == 0)
    counts: list  # list[LayerCount]
    spikes: dict = field(default_factory=dict)  # name -> uint8 array in the model's layout (record=True)

    @property
    def predictions(self) -> np.ndarray:
        lg = self.logits.mean(0) if self.logits.ndim == 3 else self.logits
        return lg.argmax(-1)

    def count_table(self) -> dict:
        return {c.name: c for c in self.counts}

    @property
    def total_sops(self) -> int:
        return sum(c.acc for c in self.counts if c.kind == "sop")

    @property
    def total_macs(self) -> int:
        return sum(c.acc for c in self.counts if c.kind == "mac")


def _csr_to_dense(idx, cnt, C):
    valid = np.arange(idx.shape[1])[None, :] < cnt[:, None]
    out = np.zeros((cnt.shape[0], C), np.uint8)
    r, j = np.nonzero(valid)
    out[r, idx[r, j]] = 1
    return out


def _unpack_tokens(bits, N):
    """[T, B, D, NW] uint64 -> [T, B, D, N] uint8."""
    T, B, D, NW = bits.shape
    by = bits.view(np.uint8).reshape(T, B, D, NW * 8)  # little-endian: bit n%64 of word n//64
    return np.unpackbits(by, axis=-1, bitorder="little")[..., :N]


BACKENDS = ("auto", "cpp", "numba")


class EngineBackendError(ImportError, RuntimeError):
    """The chosen engine backend cannot run here (a missing optional dependency, or a C++ build that failed).

    One line that says what to install. An ImportError (a missing package) and a RuntimeError (what the command
    line reports as one line instead of a traceback)."""


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _last_line(exc) -> str:
    lines = [ln.strip() for ln in str(exc or "").splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1][:200]}" if lines else type(exc).__name__


_NUMBA_HINT = "`pip install numba` (or `pip install spikedriven[engine]`)"
_CPP_HINT = "a C++ compiler (g++ or clang++) and ninja"


def resolve_backend(backend: str = "auto") -> str:
    """``cpp``: the C++ kernels (``kernels/csrc/engine_cpu.cpp``, compiled on first use) for every step, no numba
    needed; ``numba``: the numba kernels (needs numba); ``auto``: ``cpp`` if it builds (needs a C++ compiler and
    ninja), else ``numba`` if installed, else :class:`EngineBackendError` saying what to install. Both backends
    give bit-identical results."""
    if backend not in BACKENDS:
        raise ValueError(f"engine backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numba":
        if not numba_available():
            raise EngineBackendError(f"engine backend 'numba' needs numba, which is not installed: {_NUMBA_HINT}; "
                                     f"or use backend 'cpp', which needs {_CPP_HINT} instead")
        return backend
    from ..kernels._cpp import ENGINE_EXT

    if ENGINE_EXT.load():
        return "cpp"
    why = _last_line(ENGINE_EXT.error)
    if backend == "cpp":
        raise EngineBackendError(f"engine backend 'cpp' is unavailable: the C++ build failed ({why}); it needs "
                                 f"{_CPP_HINT}, or use the numba backend ({_NUMBA_HINT})")
    if numba_available():
        return "numba"
    raise EngineBackendError(f"spikedriven.engine needs {_CPP_HINT} for its C++ kernels (the build failed: {why}), "
                             f"or numba for its numba kernels: {_NUMBA_HINT}")


def _kernels(backend: str, threads: int | None):
    """The kernel set of a resolved backend: functions with the signatures of ``engine/kernels.py``."""
    if backend == "cpp":
        from .cpp_kernels import CppKernels

        return CppKernels(threads)
    from . import kernels  # numba, imported only for this backend

    return kernels


class EventEngine:
    """Event-driven executor of a compiled Spike-driven Transformer (see ``spikedriven.engine.compile_model``)."""

    def __init__(self, plan: Plan, threads: int | None = None, backend: str = "auto"):
        self.plan = plan
        self.threads = threads
        self.backend = resolve_backend(backend)
        self.K = _kernels(self.backend, threads)

    # ------------------------------------------------------------------ helpers
    def _lif_csr(self, x, n: Neuron, T):
        R, C = x.shape[1], x.shape[2]
        idx = np.empty((T * R, C), np.int32)
        cnt = np.empty(T * R, np.int32)
        self.K.lif_csr(x, T, n.vth, n.k, n.tau, n.divide, idx, cnt)
        return idx, cnt

    def _lif_dense(self, x, n: Neuron, T):
        s = np.empty((T,) + x.shape[1:], np.uint8)
        self.K.lif_dense(x, T, n.vth, n.k, n.tau, n.divide, s)
        return s

    def _linear(self, idx, cnt, lin: Linear, resid=None):
        out = np.empty((cnt.shape[0], lin.wt.shape[1]), np.float32)
        self.K.sparse_linear(idx, cnt, lin.wt, lin.b, _NO_RES if resid is None else resid, out)
        return out

    def _conv(self, idx, cnt, NB, H, W, conv: Conv3x3, resid=None):
        out = np.empty((NB * H * W, conv.w.shape[3]), np.float32)
        acc = np.empty(NB * H, np.int64)
        self.K.sparse_conv3x3(idx, cnt, NB, H, W, conv.w, conv.b, _NO_RES if resid is None else resid, out, acc)
        return out, int(acc.sum())

    # ------------------------------------------------------------------ input
    def _prepare_input(self, x):
        p = self.plan
        try:
            import torch

            if isinstance(x, torch.Tensor):
                if x.device.type != "cpu":
                    raise ValueError(f"spikedriven.engine is a CPU engine (numba / C++ kernels) and cannot run an "
                                     f"input on {x.device}; pass x.cpu()")
                x = x.detach().to("cpu", torch.float32).numpy()
        except ImportError:  # pragma: no cover
            pass
        x = np.asarray(x, dtype=np.float32)
        if x.ndim not in (4, 5):
            raise ValueError(f"expected [B, C, H, W] (static images) or [B, T, C, H, W] (event frames), got shape "
                             f"{x.shape}")
        if x.shape[-3] != p.in_channels:
            raise ValueError(f"expected {p.in_channels} input channels (dim -3), got shape {x.shape}")
        H, W = x.shape[-2:]
        f = self._total_stride()
        if H % f or W % f:
            raise ValueError(f"input height and width must be divisible by the model's total stride {f}, got {H}x{W}")
        if x.ndim == 5 and x.shape[1] != p.T:
            raise ValueError(f"event input must have T={p.T} frames (dim 1), got {x.shape[1]}")
        if not np.isfinite(x).all():
            raise ValueError("input contains NaN/inf values")
        B = x.shape[0]
        if x.ndim == 4:  # static: the encoding conv runs once (identical at every step)
            return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(B * H * W, -1), 1, B, H, W
        # event frames: [B,T,C,H,W] -> rows (t, b, y, x)
        return np.ascontiguousarray(x.transpose(1, 0, 3, 4, 2)).reshape(p.T * B * H * W, -1), p.T, B, H, W

    def _total_stride(self) -> int:
        """How much the model downsamples the input grid (its height and width must be multiples)."""
        return 2 ** self.plan.pooling_stat.count("1")

    # ------------------------------------------------------------------ forward
    def run(self, x, record: bool = False) -> EngineResult:
        """Run one batch. ``x``: torch tensor or array, [B,C,H,W] (static) or [B,T,C,H,W] (events)."""
        K = self.K
        if self.backend == "cpp":
            K.threads = int(self.threads or 0)  # OpenMP threads per call (0: all cores)
        elif self.threads:
            import numba

            numba.set_num_threads(int(self.threads))
        p = self.plan
        T = p.T
        xs, Tx, B, H, W = self._prepare_input(x)
        counts: list[LayerCount] = []
        spikes: dict = {}

        def rec_map(name, dense_rows, Hc, Wc):  # rows (t,b,y,x) x C -> [T,B,C,H,W]
            C = dense_rows.shape[-1]
            spikes[name] = np.ascontiguousarray(dense_rows.reshape(T, B, Hc, Wc, C).transpose(0, 1, 4, 2, 3))

        # ---- stem
        c0 = p.stem_convs[0]
        e = np.empty((Tx * B * H * W, c0.w.shape[3]), np.float32)
        macs = np.empty(Tx * B * H, np.int64)
        K.dense_conv3x3(xs, Tx * B, H, W, c0.w, c0.b, e, macs)
        counts.append(LayerCount(c0.name, "mac", -1, Tx * B * H * W * c0.w.shape[0], 9 * c0.w.shape[3],
                                 int(macs.sum()), 9 * Tx * B * H * W * c0.w.shape[0] * c0.w.shape[3]))
        cur = e.reshape(Tx, B * H * W, -1)
        stat = p.pooling_stat
        for i in range(3):
            lif = p.stem_lifs[i]
            C = cur.shape[2]
            if stat[i] == "1":
                s = self._lif_dense(cur, lif, T)
                if record:
                    rec_map(lif.name, s, H, W)
                H2, W2 = (H - 1) // 2 + 1, (W - 1) // 2 + 1
                idx = np.empty((T * B * H2 * W2, C), np.int32)
                cnt = np.empty(T * B * H2 * W2, np.int32)
                K.or_pool_csr(s.reshape(T * B * H * W, C), T * B, H, W, idx, cnt)
                H, W = H2, W2
            else:
                idx, cnt = self._lif_csr(cur, lif, T)
                if record:
                    rec_map(lif.name, _csr_to_dense(idx, cnt, C), H, W)
            conv = p.stem_convs[i + 1]
            out, acc = self._conv(idx, cnt, T * B, H, W, conv)
            act = int(cnt.sum())
            counts.append(LayerCount(conv.name, "sop", act, T * B * H * W * C, 9 * conv.w.shape[3], acc,
                                     act * 9 * conv.w.shape[3]))
            cur = out.reshape(T, B * H * W, -1)
        D = cur.shape[2]
        if stat[3] == "1":
            H2, W2 = (H - 1) // 2 + 1, (W - 1) // 2 + 1
            feat = np.empty((T * B * H2 * W2, D), np.float32)
            K.max_pool_dense(cur.reshape(T * B * H * W, D), T * B, H, W, feat)
            H, W = H2, W2
        else:
            feat = cur.reshape(T * B * H * W, D)
        lif3 = p.stem_lifs[3]
        idx, cnt = self._lif_csr(feat.reshape(T, B * H * W, D), lif3, T)
        if record:
            rec_map(lif3.name, _csr_to_dense(idx, cnt, D), H, W)
        X, acc = self._conv(idx, cnt, T * B, H, W, p.rpe, resid=feat)
        act = int(cnt.sum())
        counts.append(LayerCount(p.rpe.name, "sop", act, T * B * H * W * D, 9 * D, acc, act * 9 * D))

        # ---- encoder blocks; X: [T*B*N, D] real membranes
        N = H * W
        R = T * B * N
        NW = (N + 63) // 64
        for blk in p.blocks:
            idx, cnt = self._lif_csr(X.reshape(T, B * N, D), blk.shortcut_lif, T)
            act = int(cnt.sum())
            if record:
                rec_map(blk.shortcut_lif.name, _csr_to_dense(idx, cnt, D), H, W)
            P = self._linear(idx, cnt, blk.qkv)  # [R, 3D]
            for j, n in enumerate("qkv"):
                counts.append(LayerCount(f"{blk.prefix}.attn.{n}_conv", "sop", act, R * D, D, act * D, act * D))
            bits = [np.zeros((T, B, D, NW), np.uint64) for _ in range(4)]
            mask = np.empty((T, B, D), np.uint8)
            q, k_, v, m = blk.q_lif, blk.k_lif, blk.v_lif, blk.mask_lif
            if len({q.divide, k_.divide, v.divide, m.divide}) != 1:
                raise NotImplementedError("mixed neuron decay modes inside one SDSA")
            nargs = (q.vth, q.k, q.tau, k_.vth, k_.k, k_.tau, v.vth, v.k, v.tau, m.vth, m.k, m.tau)
            K.qkv_lif_sdsa(P.reshape(T, B * N, 3 * D), T, B, N, D, *nargs, q.divide, *bits, mask)
            qb, kb, vb, yb = bits
            if p.dvs_mode:  # the fused kernel's mask is replaced: Erode k and v, then K&V, then the head layout
                dh = D // p.num_heads
                ke, ve, kv = (np.zeros_like(kb) for _ in range(3))
                K.erode_grid(kb, H, W, ke)
                K.erode_grid(vb, H, W, ve)
                K.erode_heads(np.bitwise_and(ke, ve), N, dh, kv)
                ym = np.zeros_like(qb)
                K.sdsa_mask(qb, kv, m.vth, m.k, m.tau, m.divide, ym, mask)
                yb = np.zeros_like(qb)
                K.erode_heads(ym, N, dh, yb)
            counts.append(LayerCount(f"{blk.prefix}.attn.sdsa", "bitop", -1, 0, 0, 3 * T * B * D * NW,
                                     3 * T * B * D * NW))
            if record:
                for n, bb in (("q_lif", qb), ("k_lif", kb), ("v_lif", vb)):
                    u = _unpack_tokens(bb, N)  # [T,B,D,N]
                    spikes[f"{blk.prefix}.attn.{n}"] = np.ascontiguousarray(u.reshape(T, B, D, H, W))
                spikes[m.name] = mask.copy()
            yidx = np.empty((R, D), np.int32)
            ycnt = np.empty(R, np.int32)
            K.tokenbits_to_csr(yb, N, yidx, ycnt)
            act = int(ycnt.sum())
            X = self._linear(yidx, ycnt, blk.proj, resid=X)
            counts.append(LayerCount(blk.proj.name, "sop", act, R * D, D, act * D, act * D))
            # MLP
            idx, cnt = self._lif_csr(X.reshape(T, B * N, D), blk.fc1_lif, T)
            if record:
                rec_map(blk.fc1_lif.name, _csr_to_dense(idx, cnt, D), H, W)
            hid = self._linear(idx, cnt, blk.fc1)
            Hd = hid.shape[1]
            act = int(cnt.sum())
            counts.append(LayerCount(blk.fc1.name, "sop", act, R * D, Hd, act * Hd, act * Hd))
            idx, cnt = self._lif_csr(hid.reshape(T, B * N, Hd), blk.fc2_lif, T)
            if record:
                rec_map(blk.fc2_lif.name, _csr_to_dense(idx, cnt, Hd), H, W)
            X = self._linear(idx, cnt, blk.fc2, resid=X)
            act = int(cnt.sum())
            counts.append(LayerCount(blk.fc2.name, "sop", act, R * Hd, D, act * D, act * D))

        # ---- head: token mean of membranes -> LIF -> sparse linear -> mean over T
        feats = np.empty((T * B, D), np.float32)
        K.token_mean(X, T, B, N, feats)
        idx, cnt = self._lif_csr(feats.reshape(T, B, D), p.head_lif, T)
        if record:
            spikes[p.head_lif.name] = _csr_to_dense(idx, cnt, D).reshape(T, B, D)
        if p.head is None:
            out = _csr_to_dense(idx, cnt, D).reshape(T, B, D).astype(np.float32)
        else:
            out = self._linear(idx, cnt, p.head).reshape(T, B, -1)
            Kc = p.head.wt.shape[1]
            act = int(cnt.sum())
            counts.append(LayerCount(p.head.name, "sop", act, T * B * D, Kc, act * Kc, act * Kc))
        logits = out if p.tet else out.mean(0)
        return EngineResult(logits, counts, spikes)

    __call__ = run

    def predict(self, x, batch_size: int = 64) -> np.ndarray:
        """Class predictions for a (possibly large) array of inputs, in batches."""
        preds = [self.run(x[i:i + batch_size]).predictions for i in range(0, len(x), batch_size)]
        return np.concatenate(preds) if preds else np.zeros(0, np.int64)
