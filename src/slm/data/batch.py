"""The one shape of a training micro-batch, whatever made it: random windows of a shard, a mixture of
domains, windows with their cached teacher distributions, and conversations with a loss mask (padded, or
packed several to a row with `segments`).

Positions that take no loss hold IGNORE in `targets`; the loss is averaged over the others, so a mask is
never a second tensor that could disagree with the targets.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

IGNORE = -100  # the target of a position that takes no loss (PyTorch's ignore_index default)


@dataclass
class Batch:
    inputs: torch.Tensor  # (B, T) token ids
    targets: torch.Tensor  # (B, T) the next token at each position, or IGNORE
    teacher: tuple[torch.Tensor, torch.Tensor] | None = None  # cached top-k (ids, log-probs): (B, T, k) each
    real_tokens: int | None = None  # input positions that are not padding (None: all of them)
    segments: torch.Tensor | None = None  # (B, T) packed sequences: attention stays within equal ids

    @property
    def tokens(self) -> int:
        return self.inputs.numel() if self.real_tokens is None else self.real_tokens

    @property
    def loss_mask(self) -> torch.Tensor:
        return self.targets != IGNORE

    def to(self, device: torch.device) -> Batch:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        teacher = None if self.teacher is None else (move(self.teacher[0]), move(self.teacher[1]))
        segments = None if self.segments is None else move(self.segments)
        return replace(self, inputs=move(self.inputs), targets=move(self.targets), teacher=teacher, segments=segments)


def windows(rows: torch.Tensor) -> Batch:
    """Inputs and next-token targets of (B, T + 1) token windows."""
    return Batch(rows[:, :-1], rows[:, 1:])
