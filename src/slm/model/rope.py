"""Rotary position embeddings: the tables, and rotating queries and keys by them.

The layout is the rotate-half one HF checkpoints use: x * cos + cat(-x2, x1) * sin, with x1 and x2 the two
halves of a head. Inference keeps one form of it (apply_rope's composition); float32 training on a CPU takes
an autograd function with fewer passes, as slm.model.norm does for RMSNorm.
"""

from __future__ import annotations

import torch

from slm.model.norm import cpu_float32_training


def rope_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (length, head_dim) of each position's angles; each table's two halves are equal."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


class RotaryFunction(torch.autograd.Function):
    """x rotated by the tables' angles, from cos (..., D) and the first half of sin (..., D/2) (use
    apply_rope). Since the tables' halves are equal, the rotation is out1 = x1 c - x2 s, out2 = x2 c + x1 s:
    one product by cos and two half-width multiply-adds, forward and backward alike. Autograd through the
    composition makes 4 passes each way (a product, the rolled copy, its product, the sum); at the training
    shape (16, 4, 256, 32) on a 2-core AVX2 EPYC this took 0.94 ms a call forward and backward against
    1.43 (`python benchmarks/cpu_kernels.py --part rope`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin_half: torch.Tensor) -> torch.Tensor:
        half = x.size(-1) // 2
        out = x * cos
        out[..., :half].addcmul_(x[..., half:], sin_half, value=-1)
        out[..., half:].addcmul_(x[..., :half], sin_half)
        ctx.save_for_backward(cos, sin_half)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin_half = ctx.saved_tensors
        half = grad.size(-1) // 2
        # the inverse rotation: dx1 = g1 c + g2 s, dx2 = g2 c - g1 s
        dx = grad * cos
        dx[..., :half].addcmul_(grad[..., half:], sin_half)
        dx[..., half:].addcmul_(grad[..., :half], sin_half, value=-1)
        return dx, None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) rotated by cos/sin tables from rope_tables, (T, D) or per row (B, 1, T, D)."""
    half = x.size(-1) // 2
    if cpu_float32_training(x):
        return RotaryFunction.apply(x, cos, sin[..., :half])
    # x rolled by half times sin with its first half negated: the same numbers bit for bit as cat(-x2, x1) *
    # sin (negation is exact), without the negated copy of x2 (forward and backward at the training shape
    # 2.14 -> 1.54 ms a call on a 2-core AVX2 EPYC; benchmarks/cpu_kernels.py --part rope).
    signed = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
    return x * cos.to(x.dtype) + x.roll(half, -1) * signed.to(x.dtype)
