"""One autograd wrapper for every fused backend: the backend is a table of four ops (its module).

Each op table (``_cpp``, ``_triton``) provides, on a contiguous ``[T, N]`` view of the input::

    lif_forward(x2, v_th, tau, needs_grad) -> spikes       lif_backward(x2, gs, v_th, tau, alpha) -> gx
    plif_forward(x2, v_th, k, needs_grad) -> spikes        plif_backward(x2, gs, v_th, k, alpha) -> (gx, dL/dk)

Only the input is saved for backward; the kernels recompute H in the backward pass.
"""
from __future__ import annotations

import torch

__all__ = ["LIFFunction", "PLIFFunction", "lif", "plif"]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).contiguous()


class LIFFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ops, v_threshold: float, tau: float, alpha: float):
        x2 = _flat(x)
        out = ops.lif_forward(x2, float(v_threshold), float(tau), bool(ctx.needs_input_grad[0]))
        ctx.save_for_backward(x2)
        ctx.ops, ctx.params, ctx.shape = ops, (float(v_threshold), float(tau), float(alpha)), x.shape
        return out.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x2,) = ctx.saved_tensors
        gs = grad.reshape(x2.shape).to(x2.dtype).contiguous()
        gx = ctx.ops.lif_backward(x2, gs, *ctx.params)
        return gx.view(ctx.shape), None, None, None, None


class PLIFFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, ops, v_threshold: float, alpha: float):
        x2 = _flat(x)
        k = torch.sigmoid(w.detach().float())
        out = ops.plif_forward(x2, float(v_threshold), float(k), any(ctx.needs_input_grad[:2]))
        ctx.save_for_backward(x2, k)
        ctx.ops, ctx.params, ctx.shape = ops, (float(v_threshold), float(alpha)), x.shape
        ctx.w_dtype, ctx.w_shape = w.dtype, w.shape
        return out.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x2, k = ctx.saved_tensors
        v_th, alpha = ctx.params
        gs = grad.reshape(x2.shape).to(x2.dtype).contiguous()
        gx, dk = ctx.ops.plif_backward(x2, gs, v_th, float(k), alpha)
        gw = (dk.float() * (k * (1 - k))).to(ctx.w_dtype).reshape(ctx.w_shape)  # dk/dw = k (1 - k), fp32
        return gx.view(ctx.shape), gw, None, None, None


def lif(ops, x: torch.Tensor, v_threshold: float, tau: float, alpha: float) -> torch.Tensor:
    return LIFFunction.apply(x, ops, v_threshold, tau, alpha)


def plif(ops, x: torch.Tensor, w: torch.Tensor, v_threshold: float, alpha: float) -> torch.Tensor:
    return PLIFFunction.apply(x, w, ops, v_threshold, alpha)
