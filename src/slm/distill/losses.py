"""Distillation losses, computed over chunks of positions so the (positions x vocabulary) fp32 matrix is
never whole in memory.

A teacher distribution comes either full (online: the teacher's logits) or sparse (from the cache: the
top-k log-probabilities plus one "tail" bucket holding the rest of the mass, so it still sums to one).
The student is compared on the same categories. Divergences, per position, summed over categories:

    forward KL   sum p (log p - log q)                 mass-covering: the student spreads over the teacher
    reverse KL   sum q (log q - log p)                 mode-seeking: the student picks the teacher's peaks
    JS(beta)     beta KL(p||m) + (1-beta) KL(q||m),  m = beta p + (1-beta) q
    TAID         KL(p_t || q),  p_t = softmax((1-t) log q.detach() + t log p), t rising over training

Temperature T divides both sides' logits; the divergence is multiplied by T^2 (Hinton et al.) so its
gradient scale does not depend on T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

KINDS = ("forward_kl", "reverse_kl", "jsd", "taid")


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """sum_c p (log p - log q) per row; categories with p = 0 contribute nothing (no 0 * inf)."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def divergence(logp: torch.Tensor, logq: torch.Tensor, kind: str, beta: float = 0.5, t: float = 1.0) -> torch.Tensor:
    """Per-row divergence between teacher log-probs `logp` and student log-probs `logq` (same categories)."""
    if kind == "forward_kl":
        return _kl(logp, logq)
    if kind == "reverse_kl":
        return _kl(logq, logp)
    if kind == "jsd":
        if beta <= 0.0 or beta >= 1.0:
            return _kl(logp, logq) if beta >= 1.0 else _kl(logq, logp)
        logm = torch.logsumexp(torch.stack([logp + math.log(beta), logq + math.log(1 - beta)]), dim=0)
        return beta * _kl(logp, logm) + (1 - beta) * _kl(logq, logm)
    if kind == "taid":
        logpt = torch.log_softmax((1 - t) * logq.detach() + t * logp, dim=-1)
        return _kl(logpt, logq)
    raise ValueError(f"unknown distillation loss {kind!r}; choose one of {', '.join(KINDS)}")


def sparse_logq(logq_full: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Student log-probs on the teacher's top-k ids plus the tail bucket: (n, k + 1)."""
    top = logq_full.gather(-1, idx)
    return torch.cat([top, _tail(top)], dim=-1)


def sparse_logp(top_logp: torch.Tensor) -> torch.Tensor:
    return torch.cat([top_logp, _tail(top_logp)], dim=-1)


def _tail(top: torch.Tensor) -> torch.Tensor:
    mass = top.exp().sum(-1, keepdim=True).clamp(max=1.0 - 1e-6)
    return torch.log1p(-mass)


@dataclass
class LossSpec:
    kind: str = "forward_kl"
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    temperature: float = 1.0
    beta: float = 0.5  # JS
    t: float = 1.0  # TAID interpolation, set by the schedule every step


def _chunk_loss(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    teacher_h: torch.Tensor | None,
    teacher_w: torch.Tensor | None,
    top_idx: torch.Tensor | None,
    top_logp: torch.Tensor | None,
    spec: LossSpec,
) -> torch.Tensor:
    """Summed (not averaged) loss of one chunk of positions; the caller divides by the position count."""
    z = (h @ weight.t()).float()
    T = spec.temperature
    total = z.new_zeros(())
    if spec.ce_weight:
        total = total + spec.ce_weight * F.cross_entropy(z, targets, reduction="sum")
    if spec.kd_weight:
        logq = torch.log_softmax(z / T, dim=-1)
        if teacher_h is not None:
            with torch.no_grad():
                logp = torch.log_softmax((teacher_h @ teacher_w.t()).float() / T, dim=-1)
        else:
            logp, logq = sparse_logp(top_logp.float()), sparse_logq(logq, top_idx)
        kd = divergence(logp, logq, spec.kind, spec.beta, spec.t).sum()
        total = total + spec.kd_weight * T * T * kd
    return total


def distill_loss(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    spec: LossSpec,
    teacher_h: torch.Tensor | None = None,
    teacher_w: torch.Tensor | None = None,
    top_idx: torch.Tensor | None = None,
    top_logp: torch.Tensor | None = None,
    chunk: int | None = 512,
) -> torch.Tensor:
    """Mean loss over N positions: h (N, d) student hidden states, weight (V, d) the student's output layer.

    With `chunk`, positions go through in chunks under activation checkpointing: each chunk's logits are
    made, used and freed, then remade in backward, so peak memory is about chunk x V floats, not N x V.
    `chunk=None` computes everything at once (the naive reference)."""
    n = h.size(0)
    args = (teacher_h, teacher_w, top_idx, top_logp)
    if chunk is None or chunk >= n:
        return _chunk_loss(h, weight, targets, *args, spec) / n
    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, n, chunk):
        s = slice(i, i + chunk)
        part = [a[s] if a is not None and a is not teacher_w else a for a in args]
        total = total + checkpoint(
            _chunk_loss, h[s], weight, targets[s], *part, spec, use_reentrant=False, preserve_rng_state=False
        )
    return total / n
