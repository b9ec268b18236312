"""Numba kernels of the event-driven engine (CPU, multi-threaded with ``prange``).

Activation layout: a "row" is one token of one sample at one time step, rows ordered (t, b, y, x) row-major,
channels last. Spike maps are *padded CSR* per row: ``idx[r, :cnt[r]]`` are the active channels of row ``r``
(ascending). Weights are laid out so that one active input adds one contiguous row of ``Cout`` floats:

* 1x1 conv / linear: ``wt[Cin, Cout]`` (= W^T),
* 3x3 conv: ``w[Cin, 3, 3, Cout]``: input spike (c, iy, ix) adds ``w[c, ky, kx, :]`` to output (iy-ky+1, ix-kx+1).

The sparse kernels never multiply: they add weight rows for active inputs only, in float32 (fastmath off, so
the order of additions is fixed: active channels ascending, taps (ky, kx) row-major).

LIF (official SDT neuron, spec §1): H = V + (X - V) * k (k = 1/tau = 0.5 exactly for tau 2, or the PLIF's
sigmoid(w)); S = [H >= V_th]; V = 0 if S else H; V starts at 0.  ``divide=True`` computes (X - V) / tau instead
(bit-identical to the PyTorch reference for tau != 2).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

_OPTS = dict(parallel=True, fastmath=False, cache=True, nogil=True)


@intrinsic
def popcount64(typingctx, x):
    """LLVM ``ctpop.i64`` on a uint64 (compiles to one POPCNT instruction where available)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [ir.IntType(64)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.ctpop.i64")
        return builder.call(fn, [args[0]])

    return sig, codegen


@njit(cache=True, inline="always")
def _charge(v, x, k, tau, divide):
    if divide:
        return v + (x - v) / tau
    return v + (x - v) * k


# ----------------------------------------------------------------------------------------------- LIF
@njit(**_OPTS)
def lif_csr(x, T, vth, k, tau, divide, idx, cnt):
    """LIF over time on ``x[Tx, R, C]`` (Tx = T, or 1 for an input repeated at every step).

    Writes spikes of step t, row r as CSR ``idx[t*R + r, :cnt[t*R + r]]`` (branch-free compaction: every
    channel index is written, the write position advances only on a spike). Returns nothing.
    """
    Tx, R, C = x.shape
    for r in prange(R):
        v = np.zeros(C, np.float32)
        for t in range(T):
            tt = t if Tx > 1 else 0
            o = t * R + r
            n = 0
            for c in range(C):
                h = _charge(v[c], x[tt, r, c], k, tau, divide)
                sp = h >= vth
                v[c] = np.float32(0.0) if sp else h
                idx[o, n] = c
                n += np.int32(sp)
            cnt[o] = n


@njit(**_OPTS)
def lif_dense(x, T, vth, k, tau, divide, s):
    """LIF over time on ``x[Tx, R, C]``; spikes as uint8 ``s[T, R, C]``."""
    Tx, R, C = x.shape
    for r in prange(R):
        v = np.zeros(C, np.float32)
        for t in range(T):
            tt = t if Tx > 1 else 0
            for c in range(C):
                h = _charge(v[c], x[tt, r, c], k, tau, divide)
                sp = h >= vth
                v[c] = np.float32(0.0) if sp else h
                s[t, r, c] = np.uint8(sp)


# ------------------------------------------------------------------------------------- pooling
@njit(**_OPTS)
def or_pool_csr(s, NB, H, W, idx, cnt):
    """MaxPool(3, stride 2, pad 1) of a binary map = OR over the window. ``s[NB*H*W, C]`` uint8 ->
    CSR rows (nb, y2, x2) of the pooled map (H2 = (H - 1)//2 + 1). Returns nothing."""
    C = s.shape[1]
    H2 = (H - 1) // 2 + 1
    W2 = (W - 1) // 2 + 1
    for ry in prange(NB * H2):
        nb = ry // H2
        y2 = ry % H2
        for x2 in range(W2):
            o = ry * W2 + x2
            n = 0
            for c in range(C):
                on = False
                for dy in range(3):
                    iy = 2 * y2 + dy - 1
                    if iy < 0 or iy >= H:
                        continue
                    for dx in range(3):
                        ix = 2 * x2 + dx - 1
                        if ix < 0 or ix >= W:
                            continue
                        if s[(nb * H + iy) * W + ix, c] != 0:
                            on = True
                            break
                    if on:
                        break
                if on:
                    idx[o, n] = c
                    n += 1
            cnt[o] = n


@njit(**_OPTS)
def max_pool_dense(x, NB, H, W, out):
    """MaxPool(3, stride 2, pad 1) of a real map ``x[NB*H*W, C]`` -> ``out[NB*H2*W2, C]`` (stem stage 3)."""
    C = x.shape[1]
    H2 = (H - 1) // 2 + 1
    W2 = (W - 1) // 2 + 1
    for ry in prange(NB * H2):
        nb = ry // H2
        y2 = ry % H2
        for x2 in range(W2):
            o = ry * W2 + x2
            for c in range(C):
                out[o, c] = -np.inf
            for dy in range(3):
                iy = 2 * y2 + dy - 1
                if iy < 0 or iy >= H:
                    continue
                for dx in range(3):
                    ix = 2 * x2 + dx - 1
                    if ix < 0 or ix >= W:
                        continue
                    i = (nb * H + iy) * W + ix
                    for c in range(C):
                        if x[i, c] > out[o, c]:
                            out[o, c] = x[i, c]


# ------------------------------------------------------------------------------ synaptic layers
@njit(cache=True, inline="always")
def _out_size(n, k, stride, pad):
    return (n + 2 * pad - k) // stride + 1


@njit(**_OPTS)
def dense_conv2d(x, NB, H, W, stride, pad, w, bias, out, macs):
    """Dense k x k conv, any stride / padding (the encoding layer): ``x[NB*H*W, Cin]`` real, ``w[Cin,k,k,Cout]``.
    Multiply-accumulates for every in-bounds tap; ``macs[nb*Ho + yo]`` gets the count performed."""
    Cin = w.shape[0]
    k = w.shape[1]
    Cout = w.shape[3]
    Ho = _out_size(H, k, stride, pad)
    Wo = _out_size(W, k, stride, pad)
    for ry in prange(NB * Ho):
        nb = ry // Ho
        yo = ry % Ho
        m = 0
        for xo in range(Wo):
            o = ry * Wo + xo
            for j in range(Cout):
                out[o, j] = 0.0
            for ky in range(k):
                iy = yo * stride + ky - pad
                if iy < 0 or iy >= H:
                    continue
                for kx in range(k):
                    ix = xo * stride + kx - pad
                    if ix < 0 or ix >= W:
                        continue
                    i = (nb * H + iy) * W + ix
                    for c in range(Cin):
                        a = x[i, c]
                        for j in range(Cout):
                            out[o, j] += a * w[c, ky, kx, j]
                    m += Cin * Cout
            for j in range(Cout):
                out[o, j] += bias[j]
        macs[ry] = m


def dense_conv3x3(x, NB, H, W, w, bias, out, macs):
    """Dense 3x3/s1/p1 conv (V1's encoding layer): :func:`dense_conv2d` with stride 1 and padding 1."""
    dense_conv2d(x, NB, H, W, 1, 1, w, bias, out, macs)


@njit(**_OPTS)
def sparse_conv3x3(idx, cnt, NB, H, W, w, bias, resid, out, acc):
    """Event-driven 3x3/s1/p1 conv on a CSR spike map (rows (nb, y, x) of an HxW grid).

    out[o] = (sum over in-bounds taps (ky,kx) and active channels c of input pixel o+(ky-1,kx-1) of
    w[c,ky,kx,:]) + bias (+ resid[o] if resid has rows). ``acc[row y]`` = weight elements added (adds
    performed); taps that fall in the zero padding are not performed (see docs/engine.md, counting rule).
    """
    Cout = w.shape[3]
    has_res = resid.shape[0] > 0
    for ry in prange(NB * H):
        nb = ry // H
        y = ry % H
        a = 0
        for xx in range(W):
            o = ry * W + xx
            for j in range(Cout):
                out[o, j] = 0.0
            for ky in range(3):
                iy = y + ky - 1
                if iy < 0 or iy >= H:
                    continue
                for kx in range(3):
                    ix = xx + kx - 1
                    if ix < 0 or ix >= W:
                        continue
                    i = (nb * H + iy) * W + ix
                    n = cnt[i]
                    a += n
                    for q in range(n):
                        c = idx[i, q]
                        for j in range(Cout):
                            out[o, j] += w[c, ky, kx, j]
            for j in range(Cout):
                out[o, j] += bias[j]
            if has_res:
                for j in range(Cout):
                    out[o, j] += resid[o, j]
        acc[ry] = a * Cout


@njit(**_OPTS)
def sparse_linear(idx, cnt, wt, bias, resid, out):
    """Event-driven 1x1 conv / linear: out[r] = sum_{c active in r} wt[c, :] + bias (+ resid[r])."""
    R = cnt.shape[0]
    Cout = wt.shape[1]
    has_res = resid.shape[0] > 0
    for r in prange(R):
        for j in range(Cout):
            out[r, j] = 0.0
        for q in range(cnt[r]):
            c = idx[r, q]
            for j in range(Cout):
                out[r, j] += wt[c, j]
        for j in range(Cout):
            out[r, j] += bias[j]
        if has_res:
            for j in range(Cout):
                out[r, j] += resid[r, j]


# ------------------------------------------------------------------------------------------ SDSA
@njit(cache=True, inline="always")
def _mask_channel(qbits, kbits, vbits, b, c, vth_m, k_m, tau_m, divide, ybits, mask):
    """SDSA's channel mask for (sample b, channel c): count_t = sum_w popcount(K & V) -> talking-heads LIF over
    t -> mask[t, b, c]; at the steps where it fires, ybits = qbits (elsewhere ybits stays as the caller zeroed it)."""
    T, NW = qbits.shape[0], qbits.shape[3]
    vm = np.float32(0.0)
    for t in range(T):
        s = np.uint64(0)
        for wd in range(NW):
            s += popcount64(kbits[t, b, c, wd] & vbits[t, b, c, wd])
        h = _charge(vm, np.float32(s), k_m, tau_m, divide)
        if h >= vth_m:
            mask[t, b, c] = 1
            vm = np.float32(0.0)
            for wd in range(NW):
                ybits[t, b, c, wd] = qbits[t, b, c, wd]
        else:
            mask[t, b, c] = 0
            vm = h


@njit(cache=True, inline="always")
def _qkv_lif_channel(p, T, N, D, b, c, vth_q, k_q, tau_q, vth_k, k_k, tau_k, vth_v, k_v, tau_v, divide, qbits, kbits,
                     vbits):
    """The q, k and v neurons of channel c of sample b over all tokens and steps: ``p[T, B*N, 3D]`` (q | k | v
    pre-activations) -> bit n%64 of word n//64 of ``*bits[t, b, c]`` (zeroed by the caller). Shared by SDSA (V1)
    and the V2 linear attention."""
    for n in range(N):
        wd = n >> 6
        bit = np.uint64(1) << np.uint64(n & 63)
        r = b * N + n
        vq = np.float32(0.0)
        vk = np.float32(0.0)
        vv = np.float32(0.0)
        for t in range(T):
            h = _charge(vq, p[t, r, c], k_q, tau_q, divide)
            if h >= vth_q:
                qbits[t, b, c, wd] |= bit
                vq = np.float32(0.0)
            else:
                vq = h
            h = _charge(vk, p[t, r, D + c], k_k, tau_k, divide)
            if h >= vth_k:
                kbits[t, b, c, wd] |= bit
                vk = np.float32(0.0)
            else:
                vk = h
            h = _charge(vv, p[t, r, 2 * D + c], k_v, tau_v, divide)
            if h >= vth_v:
                vbits[t, b, c, wd] |= bit
                vv = np.float32(0.0)
            else:
                vv = h


@njit(**_OPTS)
def qkv_lif_sdsa(p, T, B, N, D, vth_q, k_q, tau_q, vth_k, k_k, tau_k, vth_v, k_v, tau_v, vth_m, k_m, tau_m,
                 divide, qbits, kbits, vbits, ybits, mask):
    """q/k/v neurons + SDSA on token-bit-packed spikes, one (sample, channel) per task.

    ``p[T, B*N, 3D]``: pre-activations of q | k | v (one fused sparse 1x1 conv). Spikes of q, k, v go to
    ``*bits[T, B, D, ceil(N/64)]`` (bit n%64 of word n//64 = token n). Per (t, b, c):
    count = sum_w popcount(K[w] & V[w]) -> talking-heads LIF (v_th 0.5) over t -> mask[t, b, c];
    Y = Q & (mask ? all-ones : 0) -> ``ybits``. All bit arrays must be zeroed by the caller.
    """
    for bc in prange(B * D):
        b = bc // D
        c = bc % D
        _qkv_lif_channel(p, T, N, D, b, c, vth_q, k_q, tau_q, vth_k, k_k, tau_k, vth_v, k_v, tau_v, divide, qbits,
                         kbits, vbits)
        _mask_channel(qbits, kbits, vbits, b, c, vth_m, k_m, tau_m, divide, ybits, mask)


@njit(cache=True, inline="always")
def _bit(bits, t, b, c, n):
    return (bits[t, b, c, n >> 6] >> np.uint64(n & 63)) & np.uint64(1)


@njit(**_OPTS)
def erode_grid(bits, H, W, out):
    """DVS-mode Erode of k and v in the [T,B,C,H,W] layout: per channel, 3x3 max (= OR of spikes) over the HxW
    token grid, on token-packed bits ``bits[T, B, D, NW]`` -> ``out`` (zeroed by the caller)."""
    T, B, D, NW = bits.shape
    for tbc in prange(T * B * D):
        t = tbc // (B * D)
        b = (tbc // D) % B
        c = tbc % D
        for y in range(H):
            for x in range(W):
                on = np.uint64(0)
                for iy in range(max(y - 1, 0), min(y + 2, H)):
                    for ix in range(max(x - 1, 0), min(x + 2, W)):
                        on |= _bit(bits, t, b, c, iy * W + ix)
                n = y * W + x
                out[t, b, c, n >> 6] |= on << np.uint64(n & 63)


@njit(**_OPTS)
def erode_heads(bits, N, d, out):
    """DVS-mode Erode in the head layout [T,B,h,N,d]: 3x3 OR over (token n, lane j) inside each head, where lane
    j of head h is channel h*d + j and tokens are in flattened order. Token-packed bits -> ``out`` (zeroed)."""
    T, B, D, NW = bits.shape
    for tbc in prange(T * B * D):
        t = tbc // (B * D)
        b = (tbc // D) % B
        c = tbc % D
        j = c % d
        for n in range(N):
            on = np.uint64(0)
            for cc in range(c - j + max(j - 1, 0), c - j + min(j + 2, d)):
                for nn in range(max(n - 1, 0), min(n + 2, N)):
                    on |= _bit(bits, t, b, cc, nn)
            out[t, b, c, n >> 6] |= on << np.uint64(n & 63)


@njit(**_OPTS)
def sdsa_mask(qbits, kvbits, vth_m, k_m, tau_m, divide, ybits, mask):
    """SDSA's channel mask from an already combined (and, in dvs_mode, eroded) K&V: per (b, c), count_t =
    popcount(kv[t, b, c]) -> talking-heads LIF over t -> mask; Y = Q & mask -> ``ybits`` (zeroed)."""
    B, D = qbits.shape[1], qbits.shape[2]
    for bc in prange(B * D):
        _mask_channel(qbits, kvbits, kvbits, bc // D, bc % D, vth_m, k_m, tau_m, divide, ybits, mask)  # kv & kv = kv


@njit(**_OPTS)
def tokenbits_to_csr(bits, N, idx, cnt):
    """Token-packed spikes ``bits[T, B, D, NW]`` -> CSR rows (t, b, n) of active channels."""
    T, B, D, NW = bits.shape
    for r in prange(T * B * N):
        tb = r // N
        n = r % N
        t = tb // B
        b = tb % B
        wd = n >> 6
        sh = np.uint64(n & 63)
        m = 0
        for c in range(D):
            if (bits[t, b, c, wd] >> sh) & np.uint64(1):
                idx[r, m] = c
                m += 1
        cnt[r] = m


@njit(**_OPTS)
def token_mean(x, T, B, N, out):
    """``x[T*B*N, D]`` -> mean over tokens ``out[T*B, D]`` (float32 running sum, then / N)."""
    D = x.shape[1]
    for tb in prange(T * B):
        for j in range(D):
            out[tb, j] = 0.0
        for n in range(N):
            for j in range(D):
                out[tb, j] += x[tb * N + n, j]
        for j in range(D):
            out[tb, j] = out[tb, j] / np.float32(N)

