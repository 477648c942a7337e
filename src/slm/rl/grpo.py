"""GRPO's arithmetic: advantages relative to a group of samples of the same prompt, and the clipped
policy-gradient loss with an optional KL penalty to a frozen reference (Shao et al. 2024, DeepSeekMath).

Written here rather than taken from TRL: TRL's GRPOTrainer is a transformers Trainer subclass that owns its
own loop, generation and model; slm's loop, engine and model are its own, and only these few lines of math
are needed. The variants are the recipe's choice:

  scale_rewards=False      Dr. GRPO (Liu et al. 2025): advantages are centred, not divided by the group's std
  loss_agg="token"         mean over every completion token of the batch (DAPO, Yu et al. 2025)
  loss_agg="sequence"      mean per completion, then over completions (the GRPO paper)
  loss_agg="constant"      sum over tokens / (completions x max_new_tokens): Dr. GRPO's length-unbiased form
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STD_EPS = 1e-4  # keeps a group of nearly equal rewards from blowing its advantages up


def group_advantages(rewards: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """(P, G) rewards, G samples of each of P prompts -> (P, G) advantages: each reward less its group's
    mean, divided by the group's (unbiased) standard deviation when `scale`. A group whose rewards are all
    equal gets zeros: it says nothing about which sample was better."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + STD_EPS)


@dataclass
class LossParts:
    loss: torch.Tensor  # the scalar to minimise
    kl: float  # mean per-token KL estimate to the reference (0 without one)
    clip_fraction: float  # share of completion tokens whose ratio was clipped (those with no gradient)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    clip_high: float | None = None,
    ref_logp: torch.Tensor | None = None,
    kl: float = 0.0,
    agg: str = "token",
    max_tokens: int | None = None,
) -> LossParts:
    """logp, old_logp, ref_logp, mask: (N, T), the log-probability of each completion token under the policy
    being trained, the policy that sampled it, and the reference; mask marks completion tokens. advantages:
    (N,), one per completion.

    Per token: -min(r A, clip(r, 1 - clip, 1 + clip_high) A) with r = exp(logp - old_logp), plus kl times
    the k3 estimate exp(ref - logp) - (ref - logp) - 1 (unbiased, never negative; Schulman 2020)."""
    hi = clip if clip_high is None else clip_high
    m = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None].to(logp.dtype)
    per_token = -torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + hi) * a)
    kl_mean = 0.0
    if ref_logp is not None and kl > 0:
        d = ref_logp - logp
        k3 = torch.exp(d) - d - 1
        per_token = per_token + kl * k3
        kl_mean = float((k3.detach() * m).sum() / m.sum().clamp(min=1))
    if agg == "token":
        loss = (per_token * m).sum() / m.sum().clamp(min=1)
    elif agg == "sequence":
        loss = ((per_token * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)).mean()
    elif agg == "constant":
        if max_tokens is None:
            raise ValueError("loss_agg='constant' needs max_tokens")
        loss = (per_token * m).sum() / (logp.size(0) * max_tokens)
    else:
        raise ValueError(f"unknown loss aggregation {agg!r}")
    with torch.no_grad():
        clipped = ((ratio < 1 - clip) & (a < 0)) | ((ratio > 1 + hi) & (a > 0))
        clip_fraction = float((clipped.to(m.dtype) * m).sum() / m.sum().clamp(min=1))
    return LossParts(loss, kl_mean, clip_fraction)
