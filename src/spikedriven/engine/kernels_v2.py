"""Numba kernels of the event-driven engine for Spike-driven Transformer V2 (Meta-SpikeFormer).

Twins of ``kernels/csrc/engine_v2_cpu.cpp`` (same arguments, same float32 operations in the same order, so the two
backends are bit-identical). This module also re-exports the V1 kernels it shares (LIF, sparse 1x1 and 3x3, token
bits, token mean), so it is the whole kernel set of the numba backend for a V2 plan. Layouts as in
``engine/kernels.py``: rows (nb, y, x) x channels, CSR spike maps ``idx[r, :cnt[r]]``, weights ``w[Cin, k, k,
Cout]`` (one active input adds a contiguous row of Cout floats), token-packed bits ``[T, B, D, ceil(N/64)]``.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .kernels import (_OPTS, _charge, _out_size, _qkv_lif_channel, dense_conv2d, dense_conv3x3,  # noqa: F401
                      lif_csr, lif_dense, popcount64, sparse_conv3x3, sparse_linear, token_mean, tokenbits_to_csr)


# ------------------------------------------------------------------------------------------- convolutions
@njit(**_OPTS)
def sparse_conv2d(idx, cnt, NB, H, W, stride, pad, wb, bias, resid, out, acc):
    """k x k conv with any stride / zero padding on a CSR spike map (rows (nb, y, x) of an HxW grid); weights in
    column blocks ``wb[nblk, Cin, k, k, 64]`` (columns [64 jb, 64 jb + 64) of w[Cin, k, k, Cout], zero-padded).

    out[(nb, yo, xo)] = sum over in-bounds taps (ky, kx) (input (yo*stride + ky - pad, xo*stride + kx - pad)),
    then active channels c ascending, of the weight rows, + bias (+ resid if it has rows). One task = one column
    block of one output row. ``acc[nb*Ho + yo]`` = weight elements added (all blocks).
    """
    k = wb.shape[2]
    Cout = bias.shape[0]
    nblk = wb.shape[0]
    has_res = resid.shape[0] > 0
    Ho = _out_size(H, k, stride, pad)
    Wo = _out_size(W, k, stride, pad)
    rows_n = NB * Ho
    for task in prange(nblk * rows_n):
        jb = task // rows_n
        ry = task % rows_n
        nb = ry // Ho
        yo = ry % Ho
        j0 = jb * 64
        bw = min(64, Cout - j0)
        a = 0
        for xo in range(Wo):
            o = ry * Wo + xo
            for j in range(bw):
                out[o, j0 + j] = 0.0
            for ky in range(k):
                iy = yo * stride + ky - pad
                if iy < 0 or iy >= H:
                    continue
                for kx in range(k):
                    ix = xo * stride + kx - pad
                    if ix < 0 or ix >= W:
                        continue
                    i = (nb * H + iy) * W + ix
                    n = cnt[i]
                    a += n
                    for q in range(n):
                        c = idx[i, q]
                        for j in range(bw):
                            out[o, j0 + j] += wb[jb, c, ky, kx, j]
            for j in range(bw):
                out[o, j0 + j] += bias[j0 + j]
            if has_res:
                for j in range(bw):
                    out[o, j0 + j] += resid[o, j0 + j]
        if jb == 0:
            acc[ry] = a * Cout


@njit(**_OPTS)
def sparse_dwconv(idx, cnt, NB, H, W, pad, w, bias, out, acc):
    """Depthwise k x k conv (stride 1) on a CSR spike map, ``w[k, k, C]``: output element (o, c) = sum of
    w[ky, kx, c] over the in-bounds taps whose input pixel has channel c active (taps row-major), + bias[c].
    ``acc[nb*H + y]`` = scalar additions performed.

    One task = one output row, scattered from the k input rows it reads (input (iy, ix) with channel c active adds
    w[ky, kx, c] to output x = ix - kx + pad): per output element the additions come in input-pixel order, i.e.
    taps row-major, as a gather would add them; the work is proportional to the active inputs.
    """
    k = w.shape[0]
    C = w.shape[2]
    for ry in prange(NB * H):
        nb = ry // H
        y = ry % H
        a = 0
        for o in range(ry * W, ry * W + W):
            for c in range(C):
                out[o, c] = 0.0
        for ky in range(k):
            iy = y + ky - pad
            if iy < 0 or iy >= H:
                continue
            for ix in range(W):
                i = (nb * H + iy) * W + ix
                n = cnt[i]
                if n == 0:
                    continue
                kx0 = max(0, ix + pad - (W - 1))
                kx1 = min(k - 1, ix + pad)
                for kx in range(kx1, kx0 - 1, -1):
                    o = ry * W + ix - kx + pad
                    for q in range(n):
                        c = idx[i, q]
                        out[o, c] += w[ky, kx, c]
                a += n * (kx1 - kx0 + 1)
        for o in range(ry * W, ry * W + W):
            for c in range(C):
                out[o, c] += bias[c]
        acc[ry] = a


@njit(**_OPTS)
def dense_linear(x, wt, bias, resid, out):
    """Dense 1x1 conv / linear of a real map (SepConv's pwconv2): out[r] = sum_c x[r, c] * wt[c, :] + bias
    (+ resid[r]), input channels ascending; every product is rounded, then added (no FMA)."""
    R = x.shape[0]
    Cin = wt.shape[0]
    Cout = wt.shape[1]
    has_res = resid.shape[0] > 0
    for r in prange(R):
        for j in range(Cout):
            out[r, j] = 0.0
        for c in range(Cin):
            a = x[r, c]
            for j in range(Cout):
                out[r, j] += a * wt[c, j]
        for j in range(Cout):
            out[r, j] += bias[j]
        if has_res:
            for j in range(Cout):
                out[r, j] += resid[r, j]


# ------------------------------------------------------------------------------------------ linear attention
@njit(**_OPTS)
def qkv_lif_bits(p, T, B, N, D, vth_q, k_q, tau_q, vth_k, k_k, tau_k, vth_v, k_v, tau_v, divide, qbits, kbits, vbits):
    """q/k/v neurons: ``p[T, B*N, 3D]`` (q | k | v pre-activations) -> token-packed spikes ``*bits[T, B, D, NW]``
    (bit n%64 of word n//64 = token n; zeroed by the caller). One (sample, channel) per task."""
    for bc in prange(B * D):
        _qkv_lif_channel(p, T, N, D, bc // D, bc % D, vth_q, k_q, tau_q, vth_k, k_k, tau_k, vth_v, k_v,
                         tau_v, divide, qbits, kbits, vbits)


@njit(**_OPTS)
def kv_counts(kbits, vbits, kv):
    """K^T V per head as integer counts: ``kv[t, b, h, i, j] = sum_w popcount(K[t,b,h*d+i,w] & V[t,b,h*d+j,w])``
    (tokens where k lane i and v lane j both spiked); ``kv`` int32 [T, B, h, d, d]."""
    T, B, D, NW = kbits.shape
    d = kv.shape[3]
    for row in prange(T * B * D):
        tb = row // D
        t = tb // B
        b = tb % B
        c = row % D
        head = c // d
        i = c % d
        for j in range(d):
            s = np.uint64(0)
            for wd in range(NW):
                s += popcount64(kbits[t, b, c, wd] & vbits[t, b, head * d + j, wd])
            kv[t, b, head, i, j] = np.int32(s)


@njit(**_OPTS)
def q_rows_lif(qidx, qcnt, kv, N, vth, k, tau, divide, yidx, ycnt):
    """Q (K^T V) as integer row additions over the active q bits, then the attention neuron.

    Row (t, b, n) of q's CSR map: X[h*d + j] = sum over active channels c = h*d + i of kv[t, b, h, i, j]; then per
    (b, n, channel) over t: H = V + (X - V) * k (or / tau), spike if H >= vth (the model's threshold divided by its
    power-of-two scale), V = spike ? 0 : H. Spikes -> CSR ``yidx/ycnt`` (rows (t, b, n)).
    """
    T, B, nh, d = kv.shape[0], kv.shape[1], kv.shape[2], kv.shape[3]
    D = nh * d
    for r in prange(B * N):
        b = r // N
        v = np.zeros(D, np.float32)
        X = np.zeros(D, np.int32)
        for t in range(T):
            o = t * B * N + r
            for c in range(D):
                X[c] = 0
            for q in range(qcnt[o]):
                c = qidx[o, q]
                head = c // d
                i = c - head * d
                for j in range(d):
                    X[head * d + j] += kv[t, b, head, i, j]
            m = 0
            for c in range(D):
                h = _charge(v[c], np.float32(X[c]), k, tau, divide)
                sp = h >= vth
                v[c] = np.float32(0.0) if sp else h
                yidx[o, m] = c
                m += np.int32(sp)
            ycnt[o] = m
