"""The ``cpp`` backend of the engine: the C++ twins of the numba kernels (``kernels/csrc/engine_cpu.cpp``, and
``engine_v2_cpu.cpp`` for Meta-SpikeFormer).

:class:`CppKernels` has one method per kernel of ``engine/kernels.py``, with the same arguments (numpy arrays,
outputs preallocated by the caller) and bit-identical results, so the executor runs either backend through one
interface. It needs torch and, for the build on first use, a C++ compiler and ninja, not numba. The extension is a
Python module whose functions take the numpy arrays themselves (viewed, not copied; no torch dispatch per call),
which must be C-contiguous with the numba kernels' dtypes (CSR idx/cnt int32, token bits uint64, spikes and masks
uint8, acc/macs int64, the rest float32); a wrong one is a RuntimeError that names the argument. Threads: OpenMP,
``threads`` per call (0: all cores); the GIL is released while a kernel runs.
"""
from __future__ import annotations

__all__ = ["CppKernels"]


class CppKernels:
    def __init__(self, threads: int | None = None):
        from ..kernels._cpp import ENGINE_EXT

        if not ENGINE_EXT.load():
            raise RuntimeError(f"the C++ engine kernels are unavailable ({ENGINE_EXT.error!r})")
        self.m = ENGINE_EXT.module
        self.threads = int(threads or 0)

    # LIF
    def lif_csr(self, x, T, vth, k, tau, divide, idx, cnt):
        self.m.lif_csr(x, T, vth, k, tau, divide, idx, cnt, self.threads)

    def lif_dense(self, x, T, vth, k, tau, divide, s):
        self.m.lif_dense(x, T, vth, k, tau, divide, s, self.threads)

    # pooling
    def or_pool_csr(self, s, NB, H, W, idx, cnt):
        self.m.or_pool_csr(s, NB, H, W, idx, cnt, self.threads)

    def max_pool_dense(self, x, NB, H, W, out):
        self.m.max_pool_dense(x, NB, H, W, out, self.threads)

    # synaptic layers
    def dense_conv3x3(self, x, NB, H, W, w, bias, out, macs):
        self.m.dense_conv3x3(x, NB, H, W, w, bias, out, macs, self.threads)

    def sparse_conv3x3(self, idx, cnt, NB, H, W, w, bias, resid, out, acc):
        self.m.sparse_conv3x3(idx, cnt, NB, H, W, w, bias, resid, out, acc, self.threads)

    def sparse_linear(self, idx, cnt, wt, bias, resid, out):
        self.m.sparse_linear(idx, cnt, wt, bias, resid, out, self.threads)

    # SDSA on token-packed bits
    def qkv_lif_sdsa(self, p, T, B, N, D, vth_q, k_q, tau_q, vth_k, k_k, tau_k, vth_v, k_v, tau_v, vth_m, k_m,
                     tau_m, divide, qbits, kbits, vbits, ybits, mask):
        self.m.qkv_lif_sdsa(p, T, B, N, D, vth_q, k_q, tau_q, vth_k, k_k, tau_k, vth_v, k_v, tau_v, vth_m, k_m, tau_m,
                            divide, qbits, kbits, vbits, ybits, mask, self.threads)

    def erode_grid(self, bits, H, W, out):
        self.m.erode_grid(bits, H, W, out, self.threads)

    def erode_heads(self, bits, N, d, out):
        self.m.erode_heads(bits, N, d, out, self.threads)

    def sdsa_mask(self, qbits, kvbits, vth_m, k_m, tau_m, divide, ybits, mask):
        self.m.sdsa_mask(qbits, kvbits, vth_m, k_m, tau_m, divide, ybits, mask, self.threads)

    def tokenbits_to_csr(self, bits, N, idx, cnt):
        self.m.tokenbits_to_csr(bits, N, idx, cnt, self.threads)

    # head
    def token_mean(self, x, T, B, N, out):
        self.m.token_mean(x, T, B, N, out, self.threads)

    # Meta-SpikeFormer (V2): kernels/csrc/engine_v2_cpu.cpp, twins of engine/kernels_v2.py
    def sparse_conv2d(self, idx, cnt, NB, H, W, stride, pad, wb, bias, resid, out, acc):
        self.m.sparse_conv2d(idx, cnt, NB, H, W, stride, pad, wb, bias, resid, out, acc, self.threads)

    def dense_conv2d(self, x, NB, H, W, stride, pad, w, bias, out, macs):
        self.m.dense_conv2d(x, NB, H, W, stride, pad, w, bias, out, macs, self.threads)

    def sparse_dwconv(self, idx, cnt, NB, H, W, pad, w, bias, out, acc):
        self.m.sparse_dwconv(idx, cnt, NB, H, W, pad, w, bias, out, acc, self.threads)

    def dense_linear(self, x, wt, bias, resid, out):
        self.m.dense_linear(x, wt, bias, resid, out, self.threads)

    def qkv_lif_bits(self, p, T, B, N, D, vth_q, k_q, tau_q, vth_k, k_k, tau_k, vth_v, k_v, tau_v, divide, qbits,
                     kbits, vbits):
        self.m.qkv_lif_bits(p, T, B, N, D, vth_q, k_q, tau_q, vth_k, k_k, tau_k, vth_v, k_v, tau_v, divide, qbits,
                            kbits, vbits, self.threads)

    def kv_counts(self, kbits, vbits, kv):
        self.m.kv_counts(kbits, vbits, kv, self.threads)

    def q_rows_lif(self, qidx, qcnt, kv, N, vth, k, tau, divide, yidx, ycnt):
        self.m.q_rows_lif(qidx, qcnt, kv, N, vth, k, tau, divide, yidx, ycnt, self.threads)
