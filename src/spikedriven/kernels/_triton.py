"""CUDA backend: Triton kernels for the multi-step LIF / PLIF; their ops feed ``kernels.autograd``.

Importing this module never fails: if Triton (or a CUDA device) is missing, ``AVAILABLE`` is False and the
public API never selects it. One Triton program handles a contiguous block of ``BLOCK`` neurons and loops over
T; the state V lives in registers (fp32). The input is viewed as a contiguous [T, N] matrix.

Forward: reads X[t], writes S[t]; nothing else is stored (the autograd Function saves X only).
Backward: the same program first recomputes H[t] for its block (same operations as the forward) into a
transient fp32 scratch [T, N] that is freed when the backward returns, then runs the reverse-time recurrence

    gH[t] = gS[t] * sg(H[t] - v_th) + gV[t] * (1 - S[t]),   gV[t-1] = gH[t] - gX[t],   gX[t] = gH[t] * decay

(decay = 1/tau for LIF, sigmoid(w) for PLIF). Every element is written and later read by the same thread (same
``offs`` layout in both loops), so no synchronisation is needed. For PLIF each program also writes its partial
sum of gH[t] * (X[t] - V[t-1]) (= dL/dk); the partial sums are added in torch.

Numerics: torch CUDA evaluates ``(x - v) / tau`` as ``(x - v) * (1/tau)`` (division by a Python scalar becomes a
multiplication by its fp32 reciprocal), so the kernels multiply by the same fp32 reciprocal. Kernels are launched
with ``enable_fp_fusion=False`` so that ``v + d * decay`` is not contracted into an FMA (torch runs the multiply
and the add as separate kernels); spikes therefore match the reference bit for bit. The surrogate uses
``tl.sigmoid``, whose rounding can differ from torch's by an ulp (gradients agree to ~1e-7).
"""
from __future__ import annotations

import torch

AVAILABLE = False
_IMPORT_ERROR: Exception | None = None
try:  # pragma: no cover - depends on the machine
    import triton
    import triton.language as tl

    AVAILABLE = True
except Exception as exc:  # ImportError, or a broken triton install
    _IMPORT_ERROR = exc

BLOCK = 1024
NUM_WARPS = 4


def is_available() -> bool:
    """Triton importable and a CUDA device present."""
    return AVAILABLE and torch.cuda.is_available()


if AVAILABLE:  # pragma: no cover - needs a GPU

    @triton.jit
    def _fwd_kernel(x_ptr, s_ptr, T, N, v_th, decay, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        v = tl.zeros([BLOCK], dtype=tl.float32)
        for t in range(T):
            idx = tl.cast(t, tl.int64) * N + offs
            x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            h = v + (x - v) * decay
            s = tl.where(h >= v_th, 1.0, 0.0)
            tl.store(s_ptr + idx, s.to(s_ptr.dtype.element_ty), mask=mask)
            v = h * (1.0 - s)

    @triton.jit
    def _bwd_kernel(
        x_ptr, gs_ptr, gx_ptr, h_ptr, dk_ptr, T, N, v_th, decay, alpha, NEED_DK: tl.constexpr, BLOCK: tl.constexpr
    ):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        # 1) recompute H[t] for this block (identical operations to _fwd_kernel) into the scratch buffer
        v = tl.zeros([BLOCK], dtype=tl.float32)
        for t in range(T):
            idx = tl.cast(t, tl.int64) * N + offs
            x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            h = v + (x - v) * decay
            tl.store(h_ptr + idx, h, mask=mask)
            v = h * (1.0 - tl.where(h >= v_th, 1.0, 0.0))
        # 2) reverse time
        gv = tl.zeros([BLOCK], dtype=tl.float32)  # gV[t] = dL/dV[t] coming from step t+1
        dk = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(T):
            t = T - 1 - i
            idx = tl.cast(t, tl.int64) * N + offs
            h = tl.load(h_ptr + idx, mask=mask, other=0.0)
            s = tl.where(h >= v_th, 1.0, 0.0)
            sig = tl.sigmoid(alpha * (h - v_th))
            sg = alpha * sig * (1.0 - sig)
            gs = tl.load(gs_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            gh = gs * sg + gv * (1.0 - s)
            g = gh * decay
            tl.store(gx_ptr + idx, g.to(gx_ptr.dtype.element_ty), mask=mask)
            gv = gh - g
            if NEED_DK:
                x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
                # V[t-1] from H[t-1] (V[-1] = 0: the masked load gives hp = 0 and so vp = 0 at t = 0)
                hp = tl.load(h_ptr + idx - N, mask=mask & (t > 0), other=0.0)
                vp = hp * (1.0 - tl.where(hp >= v_th, 1.0, 0.0))
                dk += tl.where(mask, gh * (x - vp), 0.0)
        if NEED_DK:
            tl.store(dk_ptr + pid, tl.sum(dk, axis=0))


def _recip_f32(tau: float) -> float:
    """fp32(1 / fp32(tau)), the factor torch CUDA multiplies by for ``tensor / tau``."""
    one = torch.tensor(1.0, dtype=torch.float32)
    return float(one / torch.tensor(float(tau), dtype=torch.float32))


def _forward(x2: torch.Tensor, v_th: float, decay: float) -> torch.Tensor:
    T, N = x2.shape
    out = torch.empty_like(x2)
    if x2.numel():
        grid = (triton.cdiv(N, BLOCK),)
        _fwd_kernel[grid](x2, out, T, N, float(v_th), float(decay), BLOCK=BLOCK, num_warps=NUM_WARPS,
                          enable_fp_fusion=False)
    return out


def _backward(x2, gs, v_th, decay, alpha, need_dk: bool):
    T, N = x2.shape
    gx = torch.empty_like(x2)
    nprog = triton.cdiv(N, BLOCK) if N else 0
    dk = torch.zeros(max(nprog, 1), dtype=torch.float32, device=x2.device)
    if x2.numel():
        h = torch.empty((T, N), dtype=torch.float32, device=x2.device)
        _bwd_kernel[(nprog,)](x2, gs, gx, h, dk, T, N, float(v_th), float(decay), float(alpha),
                              NEED_DK=need_dk, BLOCK=BLOCK, num_warps=NUM_WARPS, enable_fp_fusion=False)
    return gx, dk.double().sum()


# ---- the backend's op table (see kernels.autograd): [T, N] contiguous CUDA tensors in, tensors out
def lif_forward(x2: torch.Tensor, v_threshold: float, tau: float, needs_grad: bool) -> torch.Tensor:
    return _forward(x2, v_threshold, _recip_f32(tau))


def lif_backward(x2: torch.Tensor, gs: torch.Tensor, v_threshold: float, tau: float, alpha: float) -> torch.Tensor:
    return _backward(x2, gs, v_threshold, _recip_f32(tau), alpha, need_dk=False)[0]


def plif_forward(x2: torch.Tensor, v_threshold: float, k: float, needs_grad: bool) -> torch.Tensor:
    return _forward(x2, v_threshold, k)


def plif_backward(x2, gs, v_threshold: float, k: float, alpha: float):
    """(gx, dL/dk)."""
    return _backward(x2, gs, v_threshold, k, alpha, need_dk=True)
