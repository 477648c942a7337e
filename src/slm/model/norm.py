"""RMSNorm's arithmetic: PyTorch's, or on a CPU in float32 training, one autograd function with fewer passes.

PyTorch's CPU rms_norm is a composition of elementwise ops (power, mean, add, rsqrt, two products), and its
backward differentiates each of them in turn. The function below makes 7 elementwise passes over the
activations and 3 reductions: the sum of squares, the normalised input and one correction term. A training
step at the quickstart's shape runs 9 norms over (16, 256, 128) activations; there it takes 1.51-1.85 ms a
norm forward and backward against PyTorch's 2.61-3.56 (`python benchmarks/cpu_kernels.py --part norm`,
2-core AVX2 EPYC). Under bf16 autocast the norm's input is still the float32 residual stream and its
arithmetic float32 either way, so the function runs there too: bf16 training at the quickstart's shape on a
Zen 4 EPYC ran 1.00-1.17x as fast with it, round by round, in the full loop (median round 1.025x;
BENCHMARKS.md, item 17). CUDA has a fused kernel of its own and torch.compile fuses the composition itself,
so each of those keeps PyTorch's path. So does inference, where nothing needs a gradient: for one decoded
token the autograd function's own overhead made a norm about twice as slow (42 against 22 µs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm of float32 x with a float32 weight, forward and backward in few passes (use rms_norm)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        d = x.size(-1)
        # 1 / sqrt(mean(x^2) + eps), from the vector norm: one pass over x
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).div_(d**0.5).square_().add_(eps).rsqrt_()
        normed = x * r
        ctx.save_for_backward(normed, weight, r)
        return normed * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        normed, weight, r = ctx.saved_tensors
        d = normed.size(-1)
        g = grad * weight
        dw = (grad * normed).reshape(-1, d).sum(0) if ctx.needs_input_grad[1] else None
        # d x = r * (g - normed * mean(g * normed)): the normalisation's own gradient, as one correction
        mean = (g * normed).sum(-1, keepdim=True).div_(d)
        dx = torch.addcmul(g, normed, mean, value=-1).mul_(r) if ctx.needs_input_grad[0] else None
        return dx, dw, None


def cpu_float32_training(*tensors: torch.Tensor, under_autocast: bool = False) -> bool:
    """Where a layer's fewer-pass training function runs (this module's, slm.model.rope's): float32 tensors on
    a CPU, one of which needs a gradient, outside torch.compile, and outside autocast unless the function's
    arithmetic is float32 there too (under_autocast; see the module docstring)."""
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and torch.is_grad_enabled()
        and any(t.requires_grad for t in tensors)
        and (under_autocast or not torch.is_autocast_enabled("cpu"))
        and not torch.compiler.is_compiling()
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension, in float32 (as Llama does), returned in
    x's dtype."""
    if cpu_float32_training(x, weight, under_autocast=True):
        return RMSNormFunction.apply(x, weight, eps)
    return F.rms_norm(x.float(), (x.size(-1),), weight.float(), eps).to(x.dtype)
