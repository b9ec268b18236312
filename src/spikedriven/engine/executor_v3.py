"""The event-driven executor for E-SpikeFormer (V3): runs a compiled ``PlanV3`` with additions of weight rows on
integer activations taken as binary virtual steps; the encoding conv (on the image) is dense.

Rows (b, y, x) x channels, one real time step. Every quantiser ``round(clamp(x, 0, D))`` turns a layer's summed
output into integers v, listed as a CSR map in which channel c appears v times (its v active virtual steps); each
following conv/linear adds the weight row of every entry (``w / D``, see compiler_v3), i.e. one row per active virtual
step, with the existing V1/V2 kernels (``sparse_linear``, ``sparse_conv2d`` stride 1/2, ``sparse_dwconv``).

Attention (C channels, h heads, d = C/h, value width 4d, N tokens): Q, K, V are D binary steps each. The engine
associates the product as Q (Kᵀ V), which gives the model's integers (Q Kᵀ) V exactly (integer arithmetic):
Kᵀ V from ``kv_counts`` (popcount of K_s AND V_t over token words, for all D x D step pairs: coincidences), then
for each active q step of lane i of head h the integer row (Kᵀ V)[h, i, :] is added (int64 additions). The scale
2 / (sqrt(d) D^3) is applied as the model applies it (one multiply per attention output, before its quantiser).
"""
from __future__ import annotations

import numpy as np

from .compiler_v3 import AttnBlockV3, ConvBlockV3, DownV3, PlanV3, SepConvV3
from .executor import EngineResult, LayerCount
from .executor_v2 import EventEngineV2, _ratio_count

__all__ = ["EventEngineV3", "integer_csr"]


def integer_csr(v: np.ndarray):
    """Integers ``v[R, C]`` (0..D) -> CSR (idx [R, max(1, max row sum)], cnt [R]) listing channel c v[r, c] times
    (ascending channels): the active virtual steps of each row."""
    R = v.shape[0]
    r, c = np.nonzero(v)
    reps = v[r, c].astype(np.int64)
    cnt = v.sum(1, dtype=np.int64)
    width = max(1, int(cnt.max()) if R else 1)
    idx = np.zeros((R, width), np.int32)
    rows = np.repeat(r, reps)
    starts = np.cumsum(cnt) - cnt
    pos = np.arange(rows.size) - starts[rows]
    idx[rows, pos] = np.repeat(c, reps)
    return idx, cnt.astype(np.int32)


def _token_bits(v: np.ndarray, D: int, B: int, N: int) -> np.ndarray:
    """Integers ``v[B*N, C]`` -> token-packed virtual-step bits ``[D, B, C, ceil(N/64)]`` (bit n of step s: v > s)."""
    C = v.shape[1]
    NW = (N + 63) // 64
    steps = v.reshape(1, B, N, C) > np.arange(D, dtype=v.dtype).reshape(D, 1, 1, 1)  # [D, B, N, C]
    by = np.zeros((D, B, C, NW * 64), np.uint8)
    by[..., :N] = steps.transpose(0, 1, 3, 2)
    packed = np.packbits(by, axis=-1, bitorder="little")  # [D, B, C, NW*8] bytes, little-endian words
    return np.ascontiguousarray(packed).view(np.uint64)


class EventEngineV3(EventEngineV2):
    """Event-driven executor of a compiled E-SpikeFormer (see ``spikedriven.engine.compile_model``)."""

    def __init__(self, plan: PlanV3, threads: int | None = None, backend: str = "auto"):
        super().__init__(plan, threads=threads, backend=backend)

    # ------------------------------------------------------------------ helpers
    def _quant(self, X, name, B, H, W, record):
        """The integer neuron on X [B*H*W, C] -> (integers uint8, CSR of the active virtual steps)."""
        D = self.plan.D
        v = np.rint(np.clip(X, 0, D)).astype(np.uint8)  # round half to even, as torch.round
        if record:
            self._spikes[name] = np.ascontiguousarray(v.reshape(B, H, W, -1).transpose(0, 3, 1, 2))
        idx, cnt = integer_csr(v)
        return v, idx, cnt

    def _neurons(self, rows, C):
        return self.plan.D * rows * C  # virtual-step neurons: the rate is the mean integer / D

    def _lin(self, idx, cnt, lin, rows, resid=None, name=None):
        out = self._linear(idx, cnt, lin, resid)
        act, Co = int(cnt.sum()), lin.wt.shape[1]
        self._sop(name or lin.name, act, self._neurons(rows, lin.wt.shape[0]), Co, act * Co)
        return out

    def _sep(self, s: SepConvV3, X, B, H, W, record):
        P = B * H * W
        C = X.shape[1]
        _, idx, cnt = self._quant(X, f"{s.prefix}.spike1", B, H, W, record)
        h = self._lin(idx, cnt, s.pwconv1, P)
        _, idx, cnt = self._quant(h, f"{s.prefix}.spike2", B, H, W, record)
        dw = s.dwconv
        k, C2 = dw.w.shape[0], h.shape[1]
        u = np.empty((P, C2), np.float32)
        acc = np.empty(B * H, np.int64)
        self.K.sparse_dwconv(idx, cnt, B, H, W, dw.pad, dw.w, dw.b, u, acc)
        act = int(cnt.sum())
        self._sop(dw.name, act, self._neurons(P, C2), k * k, int(acc.sum()), act * k * k)
        _, idx, cnt = self._quant(u, f"{s.prefix}.spike3", B, H, W, record)
        out = self._lin(idx, cnt, s.pwconv2, P, resid=X)  # x + SepConv(x)
        assert out.shape[1] == C
        return out

    def _conv3(self, idx, cnt, B, H, W, c, resid=None):
        out, acc, Ho, Wo = self._sconv(idx, cnt, B, H, W, c, resid)
        act = int(cnt.sum())
        self._sop(c.name, act, self._neurons(B * H * W, c.cin), c.k * c.k * c.cout, acc,
                  _ratio_count(act * c.k * c.k * c.cout * Ho * Wo, H * W))
        return out, Ho, Wo

    # ------------------------------------------------------------------ stages
    def _down3(self, d: DownV3, X, B, H, W, record):
        _, idx, cnt = self._quant(X, d.spike, B, H, W, record)
        return self._conv3(idx, cnt, B, H, W, d.conv)

    def _conv_block3(self, blk: ConvBlockV3, X, B, H, W, record):
        X = self._sep(blk.sep, X, B, H, W, record)
        _, idx, cnt = self._quant(X, f"{blk.prefix}.spike1", B, H, W, record)
        y, _, _ = self._conv3(idx, cnt, B, H, W, blk.conv1)
        _, idx, cnt = self._quant(y, f"{blk.prefix}.spike2", B, H, W, record)
        X, _, _ = self._conv3(idx, cnt, B, H, W, blk.conv2, resid=X)
        return X

    def _attention(self, blk: AttnBlockV3, X, B, H, W, record):
        D, p = self.plan.D, blk.prefix
        N = H * W
        R = B * N
        C, h = blk.dim, blk.num_heads
        d, dv = C // h, 4 * C // h
        _, idx, cnt = self._quant(X, f"{p}.attn.head_spike", B, H, W, record)
        P = self._linear(idx, cnt, blk.qkv)  # [R, C | C | 4C]
        act = int(cnt.sum())
        for n, lo, hi in (("q", 0, C), ("k", C, 2 * C), ("v", 2 * C, 6 * C)):
            self._sop(f"{p}.attn.{n}_conv.0", act, self._neurons(R, C), hi - lo, act * (hi - lo))
        q, qidx, qcnt = self._quant(np.ascontiguousarray(P[:, :C]), f"{p}.attn.q_spike", B, H, W, record)
        k, _, _ = self._quant(np.ascontiguousarray(P[:, C:2 * C]), f"{p}.attn.k_spike", B, H, W, record)
        v, _, _ = self._quant(np.ascontiguousarray(P[:, 2 * C:]), f"{p}.attn.v_spike", B, H, W, record)
        # Kᵀ V: coincidence counts over all D x D virtual-step pairs; V's 4d lanes per head as 4 chunks of d
        kb = _token_bits(k, D, B, N)  # [D, B, C, NW]
        kb_pairs = np.ascontiguousarray(np.repeat(kb, D, axis=0))  # pair s*D + t -> K_s
        vh = v.reshape(R, h, 4, d)
        KV = np.empty((B, h, d, dv), np.int64)
        kv = np.empty((D * D, B, h, d, d), np.int32)
        for c in range(4):
            vb = _token_bits(np.ascontiguousarray(vh[:, :, c, :].reshape(R, C)), D, B, N)
            self.K.kv_counts(kb_pairs, np.ascontiguousarray(np.tile(vb, (D, 1, 1, 1))), kv)  # pair -> V_t
            KV[..., c * d:(c + 1) * d] = kv.sum(0, dtype=np.int64)
        NW = kb.shape[-1]
        # Q (Kᵀ V): every active q virtual step (row r, lane i of head hd) adds the integer row KV[b, hd, i, :]
        nq = int(qcnt.sum())
        rows = np.repeat(np.arange(R), qcnt)
        chan = qidx[np.arange(qidx.shape[1])[None, :] < qcnt[:, None]]  # row-major: entries of row 0, 1, ...
        hd, lane = chan // d, chan % d
        Xq = np.zeros((R * h, dv), np.int64)
        if nq:
            keys = rows * h + hd  # non-decreasing (channels ascend within a row)
            starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
            gathered = KV[rows // N, hd, lane]  # [nq, dv]
            Xq[keys[starts]] = np.add.reduceat(gathered, starts, axis=0)
        y = Xq.astype(np.float32).reshape(B, N, h * dv) / np.float32(D ** 3) * np.float32(blk.scale * 2)
        # the energy report counts the model's (Q Kᵀ) V: Q Kᵀ = one addition per active q step per k step and token
        # (active q x D x N), then (Q Kᵀ) V = a column of N counts per active v step; the engine's own operations
        # are the Kᵀ V coincidences (+1 each, AND + popcount on 64-token words) and d_v additions per active q step
        act_k, act_v = int(k.sum(dtype=np.int64)), int(v.sum(dtype=np.int64))
        self._sop(f"{p}.attn.matmul_qk", act_k, self._neurons(R, C), -1, int(KV.sum()), nq * D * N)
        self._sop(f"{p}.attn.matmul_v", nq, self._neurons(R, C), dv, nq * dv, act_v * N)
        self._counts.append(LayerCount(f"{p}.attn.kv_popcount", "bitop", -1, 0, 0, D * D * B * 4 * C * d * NW,
                                       D * D * B * 4 * C * d * NW))
        _, idx, cnt = self._quant(y.reshape(R, h * dv), f"{p}.attn.attn_spike", B, H, W, record)
        return self._lin(idx, cnt, blk.proj, R, resid=X)  # x + attn(x)

    def _attn_block3(self, blk: AttnBlockV3, X, B, H, W, record):
        X = self._sep(blk.sep, X, B, H, W, record)
        X = self._attention(blk, X, B, H, W, record)
        p, R = blk.prefix, B * H * W
        _, idx, cnt = self._quant(X, f"{p}.mlp.fc1_spike", B, H, W, record)
        hid = self._lin(idx, cnt, blk.fc1, R)
        _, idx, cnt = self._quant(hid, f"{p}.mlp.fc2_spike", B, H, W, record)
        return self._lin(idx, cnt, blk.fc2, R, resid=X)

    # ------------------------------------------------------------------ forward
    def run(self, x, record: bool = False) -> EngineResult:
        """Run one batch of images ``x`` [B, C, H, W] (torch tensor or array)."""
        if self.backend == "cpp":
            self.K.threads = int(self.threads or 0)
        elif self.threads:
            import numba

            numba.set_num_threads(int(self.threads))
        if getattr(x, "ndim", 4) == 5:
            raise ValueError(f"V3 (E-SpikeFormer) takes images [B, C, H, W] at one time step, got a 5-D input of "
                             f"shape {tuple(x.shape)}")
        p: PlanV3 = self.plan
        xs, _, B, H, W = self._prepare_input(x)
        self._counts, self._spikes = [], {}
        X, H, W = self._encode(xs, 1, B, H, W)
        for st in p.stages:
            if isinstance(st, ConvBlockV3):
                X = self._conv_block3(st, X, B, H, W, record)
            elif isinstance(st, DownV3):
                X, H, W = self._down3(st, X, B, H, W, record)
            elif isinstance(st, AttnBlockV3):
                X = self._attn_block3(st, X, B, H, W, record)
            else:  # pragma: no cover
                raise TypeError(f"unknown plan stage {type(st).__name__}")
        N, Cf = H * W, X.shape[1]
        feats = np.empty((B, Cf), np.float32)
        self.K.token_mean(X, 1, B, N, feats)
        s = np.rint(np.clip(feats, 0, p.D)).astype(np.uint8)  # the head neuron (norm 1: the head sees integers)
        if record:
            self._spikes["spike"] = s.copy()
        if p.head is not None:
            idx, cnt = integer_csr(s)
            logits = self._lin(idx, cnt, p.head, B)
        else:
            logits = s.astype(np.float32)
        res = EngineResult(logits, self._counts, self._spikes)
        self._counts, self._spikes = [], {}
        return res

    __call__ = run
