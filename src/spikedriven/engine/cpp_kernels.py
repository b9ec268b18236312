"""The ``cpp`` backend of the engine: the C++ twins of the numba kernels (``kernels/csrc/engine_cpu.cpp``).

:class:`CppKernels` has one method per kernel of ``engine/kernels.py``, with the same arguments (numpy arrays,
outputs preallocated by the caller) and bit-identical results, so the executor runs either backend through one
interface. It needs torch and a C++ compiler (+ ninja) for the build on first use, not numba; the arrays are shared
with torch through ``torch.from_numpy`` (no copies) and must be C-contiguous with the numba kernels' dtypes
(CSR idx/cnt int32, token bits uint64, spikes and masks uint8, acc/macs int64, the rest float32); the ops check them.
Threads: OpenMP, ``threads`` per call (0: all cores).
"""
from __future__ import annotations

import torch

__all__ = ["CppKernels"]

_t = torch.from_numpy


class CppKernels:
    def __init__(self, threads: int | None = None):
        from ..kernels._cpp import ENGINE_EXT

        if not ENGINE_EXT.load():
            raise RuntimeError(f"the C++ engine kernels are unavailable ({ENGINE_EXT.error!r})")
        self.ops = torch.ops.spikedriven_engine
        self.threads = int(threads or 0)

    # LIF
    def lif_csr(self, x, T, vth, k, tau, divide, idx, cnt):
        self.ops.lif_csr(_t(x), int(T), float(vth), float(k), float(tau), bool(divide), _t(idx), _t(cnt),
                         self.threads)

    def lif_dense(self, x, T, vth, k, tau, divide, s):
        self.ops.lif_dense(_t(x), int(T), float(vth), float(k), float(tau), bool(divide), _t(s), self.threads)

    # pooling
    def or_pool_csr(self, s, NB, H, W, idx, cnt):
        self.ops.or_pool_csr(_t(s), int(NB), int(H), int(W), _t(idx), _t(cnt), self.threads)

    def max_pool_dense(self, x, NB, H, W, out):
        self.ops.max_pool_dense(_t(x), int(NB), int(H), int(W), _t(out), self.threads)

    # synaptic layers
    def dense_conv3x3(self, x, NB, H, W, w, bias, out, macs):
        self.ops.dense_conv3x3(_t(x), int(NB), int(H), int(W), _t(w), _t(bias), _t(out), _t(macs), self.threads)

    def sparse_conv3x3(self, idx, cnt, NB, H, W, w, bias, resid, out, acc):
        self.ops.sparse_conv3x3(_t(idx), _t(cnt), int(NB), int(H), int(W), _t(w), _t(bias), _t(resid), _t(out),
                                _t(acc), self.threads)

    def sparse_linear(self, idx, cnt, wt, bias, resid, out):
        self.ops.sparse_linear(_t(idx), _t(cnt), _t(wt), _t(bias), _t(resid), _t(out), self.threads)

    # SDSA on token-packed bits
    def qkv_lif_sdsa(self, p, T, B, N, D, vth_q, k_q, tau_q, vth_k, k_k, tau_k, vth_v, k_v, tau_v, vth_m, k_m,
                     tau_m, divide, qbits, kbits, vbits, ybits, mask):
        f = (vth_q, k_q, tau_q, vth_k, k_k, tau_k, vth_v, k_v, tau_v, vth_m, k_m, tau_m)
        self.ops.qkv_lif_sdsa(_t(p), int(T), int(B), int(N), int(D), *map(float, f), bool(divide), _t(qbits),
                              _t(kbits), _t(vbits), _t(ybits), _t(mask), self.threads)

    def erode_grid(self, bits, H, W, out):
        self.ops.erode_grid(_t(bits), int(H), int(W), _t(out), self.threads)

    def erode_heads(self, bits, N, d, out):
        self.ops.erode_heads(_t(bits), int(N), int(d), _t(out), self.threads)

    def sdsa_mask(self, qbits, kvbits, vth_m, k_m, tau_m, divide, ybits, mask):
        self.ops.sdsa_mask(_t(qbits), _t(kvbits), float(vth_m), float(k_m), float(tau_m), bool(divide), _t(ybits),
                           _t(mask), self.threads)

    def tokenbits_to_csr(self, bits, N, idx, cnt):
        self.ops.tokenbits_to_csr(_t(bits), int(N), _t(idx), _t(cnt), self.threads)

    # head
    def token_mean(self, x, T, B, N, out):
        self.ops.token_mean(_t(x), int(T), int(B), int(N), _t(out), self.threads)

