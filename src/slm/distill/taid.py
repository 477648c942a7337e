"""TAID's interpolation schedule (Shing et al., ICLR 2025).

t starts at t_start and must reach t_end by the last step. It follows a linear floor, and moves ahead of
it when the objective is falling fast: with the relative drop of the loss delta = (J_prev - J) / J_prev
smoothed by momentum m = beta m + (1 - beta) delta, each step adds alpha * sigmoid(m) * (1 - t).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class TaidSchedule:
    t_start: float = 0.4
    t_end: float = 1.0
    alpha: float = 5e-4
    beta: float = 0.99
    total_steps: int = 1000
    t: float = 0.4
    momentum: float = 0.0
    prev_loss: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.t_start < self.t_end <= 1.0:
            raise ValueError(f"TAID needs 0 <= t_start < t_end <= 1 (got {self.t_start}, {self.t_end})")

    def linear(self, step: int) -> float:
        frac = min(1.0, step / max(1, self.total_steps - 1))
        return self.t_start + (self.t_end - self.t_start) * frac

    def update(self, step: int, loss: float) -> float:
        """Record the objective of `step` and move t for the next step; returns the new t."""
        if self.prev_loss is not None and math.isfinite(loss):
            delta = (self.prev_loss - loss) / (abs(self.prev_loss) + 1e-8)
            self.momentum = self.beta * self.momentum + (1 - self.beta) * delta
        if math.isfinite(loss):
            self.prev_loss = loss
        step_up = self.alpha / (1 + math.exp(-self.momentum)) * (1 - self.t)
        self.t = min(self.t_end, max(self.linear(step + 1), self.t + step_up))
        return self.t

    def state(self) -> dict:
        return asdict(self)
