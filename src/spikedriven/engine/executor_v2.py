"""The event-driven executor for Meta-SpikeFormer (V2): runs a compiled ``PlanV2`` with sparse additions, bit
operations and integer row additions; the encoding conv and SepConv's pwconv2 (real-valued inputs) run densely.

Layer-major like the V1 executor (``executor.py``): each layer runs for all T steps and all samples at once (rows
(t, b, y, x) x channels), then its neuron runs over t per neuron. A static image is encoded once (its encoding conv
output is identical at every step) and the first LIF reads it at every step.

Attention (per block, C channels, h heads of d = C/h lanes, N = H*W tokens):

1. head_lif -> CSR; one sparse 3x3 conv computes q | k | v (the folded RepConvs, 3C outputs);
2. q/k/v neurons -> token-packed bits ``[T, B, C, ceil(N/64)]`` (``qkv_lif_bits``);
3. K^T V per head as integer counts: popcount(K_i AND V_j) over the token words (``kv_counts``);
4. Q (K^T V): for every active q bit (token n, lane i of head h), add the integer row (K^T V)[h, i, :] to X[n, h, :]
   (``q_rows_lif``), then the attention neuron on X with threshold 0.5 / 0.125 = 4 (exact, see compiler_v2);
5. proj: sparse 3x3 conv of the attention spikes + the membrane shortcut.
"""
from __future__ import annotations

import numpy as np

from .compiler import Neuron
from .compiler_v2 import AttnBlockV2, ConvBlockV2, ConvK, DownV2, PlanV2, SpikeConv
from .executor import _NO_RES, EngineResult, EventEngine, LayerCount, _csr_to_dense, _unpack_tokens

__all__ = ["EventEngineV2"]


def _kernels_v2(backend: str, threads: int | None):
    if backend == "cpp":
        from .cpp_kernels import CppKernels

        return CppKernels(threads)
    from . import kernels_v2  # numba: the V2 kernels and the V1 kernels they share

    return kernels_v2


def _popcount_total(bits: np.ndarray) -> int:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return int(np.bitwise_count(bits).sum(dtype=np.int64))
    return int(np.unpackbits(bits.view(np.uint8)).sum(dtype=np.int64))


def _ratio_count(num: int, den: int):
    """num / den as an int when exact, else a float (the energy report's T x rate x FLOPs of a strided conv)."""
    return num // den if num % den == 0 else num / den


class EventEngineV2(EventEngine):
    """Event-driven executor of a compiled Meta-SpikeFormer (see ``spikedriven.engine.compile_model``)."""

    def __init__(self, plan: PlanV2, threads: int | None = None, backend: str = "auto"):
        super().__init__(plan, threads=threads, backend=backend)
        self.K = _kernels_v2(self.backend, threads)

    # ------------------------------------------------------------------ helpers
    def _lif(self, X, Tx, n: Neuron, rows: int):
        """LIF over t on X [Tx*rows, C] (Tx = T, or 1 for an input identical at every step) -> CSR [T*rows]."""
        return self._lif_csr(X.reshape(Tx, rows, X.shape[1]), n, self.plan.T)

    def _rec(self, name, idx, cnt, B, H, W, C):
        T = self.plan.T
        dense = _csr_to_dense(idx, cnt, C)
        self._spikes[name] = np.ascontiguousarray(dense.reshape(T, B, H, W, C).transpose(0, 1, 4, 2, 3))

    def _sop(self, name, act, neurons, fanout, acc, nominal=None):
        self._counts.append(LayerCount(name, "sop", int(act), int(neurons), int(fanout), int(acc),
                                       act * fanout if nominal is None else nominal))

    def _sconv(self, idx, cnt, NB, H, W, c: SpikeConv, resid=None):
        """A synaptic layer on spikes (CSR rows (nb, y, x) of an H x W grid) -> (out, additions performed, Ho, Wo)."""
        Ho, Wo = (H + 2 * c.pad - c.k) // c.stride + 1, (W + 2 * c.pad - c.k) // c.stride + 1
        out = np.empty((NB * Ho * Wo, c.cout), np.float32)
        acc = np.empty(NB * Ho, np.int64)
        self.K.sparse_conv2d(idx, cnt, NB, H, W, c.stride, c.pad, c.wb, c.b, _NO_RES if resid is None else resid, out,
                             acc)
        return out, int(acc.sum()), Ho, Wo

    def _tile(self, X, Tx, rows):
        """X [Tx*rows, C] as [T*rows, C] (a static input repeated at every step)."""
        T = self.plan.T
        if Tx == T:
            return X
        full = np.broadcast_to(X.reshape(1, rows, -1), (T, rows, X.shape[1]))
        return np.ascontiguousarray(full).reshape(T * rows, -1)

    # ------------------------------------------------------------------ input
    def _total_stride(self) -> int:
        return self.plan.total_stride

    # ------------------------------------------------------------------ layers
    def _encode(self, xs, Tx, B, H, W):
        e: ConvK = self.plan.encode
        k, cin, cout = e.w.shape[1], e.w.shape[0], e.w.shape[3]
        Ho, Wo = (H + 2 * e.pad - k) // e.stride + 1, (W + 2 * e.pad - k) // e.stride + 1
        out = np.empty((Tx * B * Ho * Wo, cout), np.float32)
        macs = np.empty(Tx * B * Ho, np.int64)
        self.K.dense_conv2d(xs, Tx * B, H, W, e.stride, e.pad, e.w, e.b, out, macs)
        self._counts.append(LayerCount(e.name, "mac", -1, Tx * B * H * W * cin, k * k * cout, int(macs.sum()),
                                       Tx * B * Ho * Wo * k * k * cin * cout))
        return out, Ho, Wo

    def _down(self, d: DownV2, X, Tx, B, H, W, record):
        T = self.plan.T
        C = X.shape[1]
        idx, cnt = self._lif(X, Tx, d.lif, B * H * W)
        if record:
            self._rec(d.lif.name, idx, cnt, B, H, W, C)
        c = d.conv
        out, acc, Ho, Wo = self._sconv(idx, cnt, T * B, H, W, c)
        act = int(cnt.sum())
        # the energy report: T x rate x FLOPs = act / (T*B*H*W*Cin) * T * k^2*Ho*Wo*Cin*Cout * B
        self._sop(c.name, act, T * B * H * W * C, c.k * c.k * c.cout, acc,
                  _ratio_count(act * c.k * c.k * c.cout * Ho * Wo, H * W))
        return out, Ho, Wo

    def _conv_block(self, blk: ConvBlockV2, X, Tx, B, H, W, record):
        T = self.plan.T
        P = B * H * W
        R = T * P
        C = X.shape[1]
        # SepConv: lif1 -> pwconv1 (sparse) -> lif2 -> dwconv 7x7 (sparse) -> pwconv2 (dense MACs) + shortcut
        idx, cnt = self._lif(X, Tx, blk.sep_lif1, P)
        if record:
            self._rec(blk.sep_lif1.name, idx, cnt, B, H, W, C)
        h = self._linear(idx, cnt, blk.pwconv1)
        C2 = h.shape[1]
        act = int(cnt.sum())
        self._sop(blk.pwconv1.name, act, R * C, C2, act * C2)
        idx, cnt = self._lif(h, T, blk.sep_lif2, P)
        if record:
            self._rec(blk.sep_lif2.name, idx, cnt, B, H, W, C2)
        dw = blk.dwconv
        k = dw.w.shape[0]
        u = np.empty((R, C2), np.float32)
        acc = np.empty(T * B * H, np.int64)
        self.K.sparse_dwconv(idx, cnt, T * B, H, W, dw.pad, dw.w, dw.b, u, acc)
        act = int(cnt.sum())
        self._sop(dw.name, act, R * C2, k * k, int(acc.sum()), act * k * k)
        pw = blk.pwconv2
        X2 = np.empty((R, pw.wt.shape[1]), np.float32)
        self.K.dense_linear(u, pw.wt, pw.b, self._tile(X, Tx, P), X2)
        self._counts.append(LayerCount(pw.name, "mac", -1, R * C2, C, R * C2 * C, R * C2 * C))
        X = X2
        # conv1 3x3 -> lif2 -> conv2 3x3 + shortcut
        idx, cnt = self._lif(X, T, blk.lif1, P)
        if record:
            self._rec(blk.lif1.name, idx, cnt, B, H, W, C)
        y, acc, _, _ = self._sconv(idx, cnt, T * B, H, W, blk.conv1)
        Ch = y.shape[1]
        act = int(cnt.sum())
        self._sop(blk.conv1.name, act, R * C, 9 * Ch, acc)
        idx, cnt = self._lif(y, T, blk.lif2, P)
        if record:
            self._rec(blk.lif2.name, idx, cnt, B, H, W, Ch)
        X, acc, _, _ = self._sconv(idx, cnt, T * B, H, W, blk.conv2, resid=X)
        act = int(cnt.sum())
        self._sop(blk.conv2.name, act, R * Ch, 9 * C, acc)
        return X

    def _attn_block(self, blk: AttnBlockV2, X, Tx, B, H, W, record):
        T = self.plan.T
        K = self.K
        N = H * W
        R = T * B * N
        C = X.shape[1]
        h = blk.num_heads
        d = C // h
        p = blk.prefix
        idx, cnt = self._lif(X, Tx, blk.head_lif, B * N)
        if record:
            self._rec(blk.head_lif.name, idx, cnt, B, H, W, C)
        X = self._tile(X, Tx, B * N)
        P, acc, _, _ = self._sconv(idx, cnt, T * B, H, W, blk.qkv)  # [R, 3C]
        act = int(cnt.sum())
        for n in "qkv":
            self._sop(f"{p}.attn.{n}_conv", act, R * C, 9 * C, acc // 3)
        NW = (N + 63) // 64
        qb, kb, vb = np.zeros((3, T, B, C, NW), np.uint64)  # three contiguous (zeroed) bit arrays
        q, k_, v = blk.q_lif, blk.k_lif, blk.v_lif
        if len({q.divide, k_.divide, v.divide}) != 1:
            raise NotImplementedError("mixed neuron decay modes among q/k/v")
        K.qkv_lif_bits(P.reshape(T, B * N, 3 * C), T, B, N, C, q.vth, q.k, q.tau, k_.vth, k_.k, k_.tau, v.vth, v.k,
                       v.tau, q.divide, qb, kb, vb)
        qidx = np.empty((R, C), np.int32)
        qcnt = np.empty(R, np.int32)
        K.tokenbits_to_csr(qb, N, qidx, qcnt)
        kv = np.empty((T, B, h, d, d), np.int32)
        K.kv_counts(kb, vb, kv)
        m = blk.attn_lif
        yidx = np.empty((R, C), np.int32)
        ycnt = np.empty(R, np.int32)
        K.q_rows_lif(qidx, qcnt, kv, N, m.vth, m.k, m.tau, m.divide, yidx, ycnt)
        # K^T V: the energy report counts one addition per active k spike per lane of v (T x rate_k x h*d*d*N);
        # the engine counts the coincidences (the non-zero increments, sum of K^T V) with AND + popcount on words
        act_k = _popcount_total(kb)
        self._sop(f"{p}.attn.matmul_kv", act_k, R * C, d, int(kv.sum(dtype=np.int64)), act_k * d)
        self._counts.append(LayerCount(f"{p}.attn.kv_popcount", "bitop", -1, 0, 0, T * B * C * d * NW,
                                       T * B * C * d * NW))
        act_q = int(qcnt.sum())
        self._sop(f"{p}.attn.matmul_q", act_q, R * C, d, act_q * d)  # one integer row of d per active q bit
        if record:
            for name, bb in ((q.name, qb), (k_.name, kb), (v.name, vb)):
                self._spikes[name] = np.ascontiguousarray(_unpack_tokens(bb, N).reshape(T, B, C, H, W))
            self._rec(m.name, yidx, ycnt, B, H, W, C)
        X, acc, _, _ = self._sconv(yidx, ycnt, T * B, H, W, blk.proj, resid=X)
        act = int(ycnt.sum())
        self._sop(blk.proj.name, act, R * C, 9 * C, acc)
        # token MLP (Conv1d k=1 = per-token linear)
        idx, cnt = self._lif(X, T, blk.fc1_lif, B * N)
        if record:
            self._rec(blk.fc1_lif.name, idx, cnt, B, H, W, C)
        hid = self._linear(idx, cnt, blk.fc1)
        Hd = hid.shape[1]
        act = int(cnt.sum())
        self._sop(blk.fc1.name, act, R * C, Hd, act * Hd)
        idx, cnt = self._lif(hid, T, blk.fc2_lif, B * N)
        if record:
            self._rec(blk.fc2_lif.name, idx, cnt, B, H, W, Hd)
        X = self._linear(idx, cnt, blk.fc2, resid=X)
        act = int(cnt.sum())
        self._sop(blk.fc2.name, act, R * Hd, C, act * C)
        return X

    # ------------------------------------------------------------------ forward
    def run(self, x, record: bool = False) -> EngineResult:
        """Run one batch. ``x``: torch tensor or array, [B,C,H,W] (static) or [B,T,C,H,W] (events)."""
        if self.backend == "cpp":
            self.K.threads = int(self.threads or 0)
        elif self.threads:
            import numba

            numba.set_num_threads(int(self.threads))
        p: PlanV2 = self.plan
        T = p.T
        xs, Tx, B, H, W = self._prepare_input(x)
        self._counts, self._spikes = [], {}
        X, H, W = self._encode(xs, Tx, B, H, W)
        for st in p.stages:
            if isinstance(st, ConvBlockV2):
                X = self._conv_block(st, X, Tx, B, H, W, record)
            elif isinstance(st, DownV2):
                X, H, W = self._down(st, X, Tx, B, H, W, record)
            elif isinstance(st, AttnBlockV2):
                X = self._attn_block(st, X, Tx, B, H, W, record)
            else:  # pragma: no cover
                raise TypeError(f"unknown plan stage {type(st).__name__}")
            Tx = T
        # head: token mean of the membranes -> lif -> head (and head_kd) -> mean over T
        N = H * W
        D = X.shape[1]
        X = self._tile(X, Tx, B * N)
        feats = np.empty((T * B, D), np.float32)
        self.K.token_mean(X, T, B, N, feats)
        idx, cnt = self._lif_csr(feats.reshape(T, B, D), p.head_lif, T)
        if record:
            self._spikes[p.head_lif.name] = _csr_to_dense(idx, cnt, D).reshape(T, B, D)
        if p.heads:
            outs = []
            act = int(cnt.sum())
            for lin in p.heads:
                o = self._linear(idx, cnt, lin).reshape(T, B, -1)
                Kc = lin.wt.shape[1]
                self._sop(lin.name, act, T * B * D, Kc, act * Kc)
                outs.append(o.mean(0))
            logits = outs[0] if len(outs) == 1 else (outs[0] + outs[1]) / np.float32(2)
        else:
            logits = _csr_to_dense(idx, cnt, D).reshape(T, B, D).astype(np.float32).mean(0)
        res = EngineResult(logits, self._counts, self._spikes)
        self._counts, self._spikes = [], {}
        return res

    __call__ = run
