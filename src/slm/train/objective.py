"""The seam between the training loop and what a step computes.

The loop (train/loop.py) owns the model, optimiser, schedule, DDP, checkpoints, metrics, evaluation and
resume. An objective owns what one step computes: the batches it draws, its loss on a batch, extra state to
checkpoint, and metrics to log. Next-token prediction (here) and distillation (distill/objective.py) are
objectives; a new method (masked SFT, policy-gradient RL) is a new objective, never a branch in the loop.

Hooks are called in this order; those that may write shared files run on rank 0 first, then on the others:

    prepare(cfg, run, say)   before the tokenizer and data exist (e.g. adopt a teacher's tokenizer)
    prepare_data(cfg, run, say) -> (tokenizer, data)   data has batcher(seq_len, batch_size, seed)
    setup(env)               once data, tokenizer and device are known (e.g. load a teacher, build a cache)
    init_model(model)        fresh runs only, before the optimiser is made (e.g. copy teacher layers)
    adapt(model)             every run, fresh or resumed, before the optimiser: change what is trained (LoRA)
    batch(step, index)       micro-batch `index` of step `step`: the same on every process and every resume
    loss(forward, model, batch)  the scalar to minimise; `forward` is the module to call (DDP-wrapped),
                             `model` the plain Transformer (for its weights)
    end_step(step, loss)     after the optimiser step: metrics to log with the step
    held_out(model, final)   the objective's held-out metrics on rank 0 (final: the whole held-out set):
                             loss and bits-per-byte for LM objectives, accuracy for RL. The loop calls
                             evaluate(), which adds train.eval_tasks' accuracy and answer bits-per-byte
                             for every objective; everything is logged as val_NAME
    summary()                extra fields for summary.json after the final evaluation
    state() / load_state()   JSON-able state saved in each checkpoint's meta.json and restored on resume

An objective also says whether every training step's batch has one shape (fixed_shapes): where it does, the
loop keeps even the step's largest tensors in the C heap for the next step (slm.train.memory).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer

from slm.config import Config
from slm.data.batch import Batch
from slm.data.shards import Batcher
from slm.errors import SlmError
from slm.eval.harness import score_multiple_choice
from slm.eval.tasks import Task, load_task
from slm.model.lora import add_lora
from slm.model.score import lm_metrics, tokens_bpb
from slm.model.transformer import Transformer
from slm.run import Run
from slm.tokenizer import token_byte_lengths
from slm.train.init import adopt_init, load_init_weights
from slm.train.setup import prepare_run


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
    autocast: Any = None  # the loop's autocast context (evaluation runs in it when dtype is bfloat16)


class Objective:
    """Next-token prediction over the data's windows: what `slm train` runs, and the base of the others."""

    name = "lm"
    fixed_shapes = True  # windows of seq_len, batch_size of them, every step

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.eval_tasks = [scored_task(t) for t in cfg.train.eval_tasks]  # refused now, not at the first eval

    def prepare(self, cfg: Config, run: Run, say: Callable[[str], None]) -> None:
        if cfg.train.init:
            adopt_init(cfg, run, say)

    def prepare_data(self, cfg: Config, run: Run, say: Callable[[str], None]) -> tuple[Tokenizer, Any]:
        return prepare_run(cfg, run, log=say)

    def setup(self, env: Env) -> None:
        self.env = env
        self.by_domain: dict[str, dict[str, float]] = {}
        if hasattr(env.shards, "tokens"):
            self.val_tokens = env.shards.tokens("val")
            Batcher(self.val_tokens, env.seq_len, 1, 0, split="val")  # fail now, not at the first evaluation
            self.byte_lengths = token_byte_lengths(env.tokenizer)

    def init_model(self, model: Transformer) -> None:
        if self.cfg.train.init:
            load_init_weights(model, self.cfg, self.env.run)
            self.env.say(f"weights from {self.cfg.train.init}")

    def adapt(self, model: Transformer) -> None:
        lora = self.cfg.lora
        if lora is not None:
            hits = add_lora(model, lora.rank, lora.alpha, lora.dropout, lora.targets)
            self.env.say(f"LoRA rank {lora.rank} (alpha {lora.alpha}) on {len(hits)} layers; the rest frozen")

    def batch(self, step: int, index: int) -> Batch:
        return self.env.batcher.batch(step, index)

    def loss(self, forward: torch.nn.Module, model: Transformer, batch: Batch) -> torch.Tensor:
        _, loss = forward(batch.inputs, batch.targets, z_loss=self.cfg.train.z_loss)
        return loss

    def end_step(self, step: int, loss: float) -> dict[str, float]:
        return {}

    def evaluate(self, model: Transformer, final: bool) -> dict[str, float]:
        """What the loop logs at an evaluation: the objective's held-out figures and train.eval_tasks'."""
        return {**self.held_out(model, final), **self.task_metrics(model, final)}

    def held_out(self, model: Transformer, final: bool) -> dict[str, float]:
        """Bits-per-byte of held-out windows: eval_tokens of them, or (final) the whole split. A mixture's
        final figure is scored domain by domain (mixture search needs each) and pools the validation
        domains' sums rather than scoring the same text again."""
        e = self.env
        if not final:
            return self._bpb(model, self.val_tokens, e.cfg.train.eval_tokens)
        if not e.shards.domains:
            return self._bpb(model, self.val_tokens, None)
        for dm in e.shards.domains:
            if len(toks := e.shards.domain_val(dm)) > e.seq_len:
                self.by_domain[dm] = self._bpb(model, toks, None)
        pooled = [self.by_domain[dm] for dm in e.shards.val_domains if dm in self.by_domain]
        return lm_metrics(
            sum(r["loss"] * r["tokens"] for r in pooled),
            sum(r["tokens"] for r in pooled),
            sum(r["bytes"] for r in pooled),
        )

    def task_metrics(self, model: Transformer, final: bool) -> dict[str, float]:
        """Accuracy and answer bits-per-byte on each of train.eval_tasks (the first train.eval_limit items;
        final: all of them): figures that rank runs early where loss may not (the sweep's early signals)."""
        out: dict[str, float] = {}
        was_training = model.training
        model.eval()
        for task in self.eval_tasks:
            part = task if final else Task(task.spec, task.items[: self.cfg.train.eval_limit], task.path)
            r = score_multiple_choice(model, self.env.tokenizer, part)
            out[f"accuracy_{task.spec.name}"] = r["acc"]
            out[f"answer_bpb_{task.spec.name}"] = r["answer_bpb"]
        model.train(was_training)
        return out

    def _bpb(self, model: Transformer, tokens: Any, max_tokens: int | None) -> dict[str, float]:
        e = self.env
        cast = e.autocast if e.dtype == "bfloat16" else None
        return tokens_bpb(model, tokens, self.byte_lengths, e.seq_len, max_tokens, e.cfg.train.batch_size, cast)

    def summary(self) -> dict[str, Any]:
        return {"val_bpb_by_domain": {dm: r["bpb"] for dm, r in self.by_domain.items()}} if self.by_domain else {}

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


def scored_task(name_or_path: str) -> Task:
    """A train.eval_tasks entry: a multiple-choice task (a generated reply needs a chat model and a checker:
    `slm eval` or rl.eval_tasks score those)."""
    task = load_task(name_or_path)
    if task.spec.type != "multiple_choice":
        raise SlmError(
            f"train.eval_tasks={name_or_path} is a {task.spec.type} task; training evaluations score "
            "multiple-choice tasks (e.g. a cloze task from `slm data cloze`)"
        )
    return task
