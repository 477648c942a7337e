"""Learning-rate schedules: linear warmup, then cosine decay or warmup-stable-decay (MiniCPM's WSD)."""

from __future__ import annotations

import math

from slm.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - 1 - cfg.warmup_steps)
        return floor + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (peak - floor)
    # wsd: hold the peak, then decay linearly to the floor over the last decay_fraction of training.
    start = wsd_decay_start(cfg)
    if step < start:
        return peak
    progress = (step - start) / max(1, cfg.max_steps - 1 - start)
    return peak + (floor - peak) * min(progress, 1.0)


def wsd_decay_start(cfg: TrainConfig) -> int:
    """The first step of a WSD run's decay: the last decay_fraction of its steps, after warmup. A run
    branched from a longer one (slm train --decay-at) names it outright (train.decay_start)."""
    default = cfg.max_steps - round(cfg.decay_fraction * cfg.max_steps)
    return max(cfg.warmup_steps, cfg.decay_start if cfg.decay_start is not None else default)
