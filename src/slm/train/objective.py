"""The seam between the training loop and what a step computes.

The loop (train/loop.py) owns the model, optimiser, schedule, DDP, checkpoints, metrics, evaluation and
resume. An objective owns what one step computes: the batches it draws, its loss on a batch, extra state to
checkpoint, and metrics to log. Next-token prediction (here) and distillation (distill/objective.py) are
objectives; a new method (masked SFT, policy-gradient RL) is a new objective, never a branch in the loop.

Hooks are called in this order; those that may write shared files run on rank 0 first, then on the others:

    prepare(cfg, run, say)   before the tokenizer and data exist (e.g. adopt a teacher's tokenizer)
    setup(env)               once data, tokenizer and device are known (e.g. load a teacher, build a cache)
    init_model(model)        fresh runs only, before the optimiser is made (e.g. copy teacher layers)
    batch(step, index)       micro-batch `index` of step `step`: the same on every process and every resume
    loss(forward, model, batch)  the scalar to minimise; `forward` is the module to call (DDP-wrapped),
                             `model` the plain Transformer (for its weights)
    end_step(step, loss)     after the optimiser step: metrics to log with the step
    state() / load_state()   JSON-able state saved in each checkpoint's meta.json and restored on resume
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer

from slm.config import Config
from slm.data.batch import Batch
from slm.model.transformer import Transformer
from slm.run import Run


@dataclass
class Env:
    """What the loop knows once data is ready, handed to the objective's setup()."""

    cfg: Config
    run: Run
    tokenizer: Tokenizer
    shards: Any  # Shards or MixtureShards: tokens(split), batcher(...), check_tokenizer(...)
    batcher: Any  # batch(step, index) -> Batch
    seq_len: int
    device: torch.device
    dtype: str  # "float32" or "bfloat16": what the loop's autocast runs in
    say: Callable[[str], None]


class Objective:
    """Next-token prediction over the data's windows: what `slm train` runs, and the base of the others."""

    name = "lm"

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def prepare(self, cfg: Config, run: Run, say: Callable[[str], None]) -> None:
        pass

    def setup(self, env: Env) -> None:
        self.env = env

    def init_model(self, model: Transformer) -> None:
        pass

    def batch(self, step: int, index: int) -> Batch:
        return self.env.batcher.batch(step, index)

    def loss(self, forward: torch.nn.Module, model: Transformer, batch: Batch) -> torch.Tensor:
        _, loss = forward(batch.inputs, batch.targets, z_loss=self.cfg.train.z_loss)
        return loss

    def end_step(self, step: int, loss: float) -> dict[str, float]:
        return {}

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass
