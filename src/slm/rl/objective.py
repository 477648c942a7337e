"""Reinforcement learning with verifiable rewards (GRPO) as a training objective. `slm rl` hands it to the
loop (train/loop.py), unchanged: progress, checkpoints, resume, DDP, metrics and the report are the loop's.

Each micro-batch is drawn by sampling: `batch(step, index)` takes train.batch_size prompts of rl.task, has
the engine sample rl.group completions of each with the weights of this step, judges them with the task's
checker, and returns them as a batch with group-relative advantages; `loss` is GRPO's clipped surrogate
(rl/grpo.py). With rl.updates > 1 the same rollouts serve that many optimiser steps, the ratio to the
sampling policy clipped. Rollouts and updates interleave: every round samples from the latest weights.

Evaluation is greedy accuracy on rl.eval_tasks (logged as val_accuracy), judged as `slm eval` judges.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from slm.config import Config, RlConfig
from slm.data.batch import Batch
from slm.errors import SlmError
from slm.eval.harness import score_generate
from slm.eval.tasks import Task, load_generate_task
from slm.infer.template import ChatFormat, chat_format
from slm.model.load import load_model
from slm.model.transformer import Transformer
from slm.rl.grpo import grpo_loss
from slm.rl.rollouts import Rollouts, Tally, completion_logprobs, prompt_ids, roll_out
from slm.run import Run, atomic_write_text
from slm.tokenizer import end_ids, load_tokenizer
from slm.train.init import adopt_init
from slm.train.objective import Env, Objective


def rl_config(cfg: Config) -> RlConfig:
    if cfg.rl is None:
        raise SlmError("no [rl] table: name the training prompts, e.g. --set rl.task=tasks/problems.yaml")
    return cfg.rl


def weights_hash(model: Transformer) -> str:
    """Identifies a reference model by its weights, so a resume can tell whether it is the same one."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class RlData:
    """What prepare_data hands the loop: the prompts (the loop asks it for a batcher; rollouts are drawn by
    the objective itself, since they need the model)."""

    def __init__(self, task: Task):
        self.task = task

    def batcher(self, seq_len: int, batch_size: int, seed: int) -> RlData:
        return self


class GrpoObjective(Objective):
    name = "rl"
    fixed_shapes = False  # rollouts as long as what was generated

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.rl = rl_config(cfg)
        self.tally = Tally()
        self.sums: dict[str, float] = {}  # loss-side metrics since the last log, summed over micro-batches
        self.micro = 0
        self.cached: dict[tuple[int, int], Rollouts] = {}
        self.orders: dict[int, list[int]] = {}  # epoch -> the prompts' order in it
        self.reference: Transformer | None = None
        self.reference_hash: str | None = None

    def prepare(self, cfg: Config, run: Run, say: Callable[[str], None]) -> None:
        """The tasks are read and checked first: a bad file is refused before anything is imported."""
        rl = self.rl
        if not cfg.train.init and not run.tokenizer_path.is_file():
            raise SlmError("slm rl needs a model to start from: set train.init (or --init SOURCE)")
        self.task = load_generate_task(rl.task, "rl.task", "RL")
        self.evals = [load_generate_task(t, "rl.eval_tasks", "RL") for t in rl.eval_tasks]
        if not self.evals:
            raise SlmError("name rl.eval_tasks: held-out task files (slm data tasks writes test.yaml)")
        self.init_source = adopt_init(cfg, run, say) if cfg.train.init else None

    def prepare_data(self, cfg: Config, run: Run, say: Callable[[str], None]) -> tuple[Tokenizer, Any]:
        tok = load_tokenizer(run.tokenizer_path if run.tokenizer_path.is_file() else cfg.tokenizer.path)
        own = run.chat_template_path.read_text(encoding="utf-8") if run.chat_template_path.is_file() else None
        chats = [t for t in (self.task, *self.evals) if t.spec.chat]
        self.chat: ChatFormat | None = chat_format(tok, own, None, cfg.tokenizer.eos_token) if chats else None
        self.stop_ids = end_ids(tok, cfg.tokenizer.eos_token)
        max_new = self.rl.max_new_tokens or self.task.spec.max_new_tokens
        longest = max(len(prompt_ids(it, self.task, tok, self.chat)) for it in self.task.items)
        if longest + max_new > cfg.seq_len + 1:
            raise SlmError(
                f"the longest prompt of rl.task has {longest} tokens; with {max_new} new tokens it exceeds "
                f"train.seq_len={cfg.seq_len}: raise train.seq_len or lower rl.max_new_tokens"
            )
        if not run.tokenizer_path.is_file():
            atomic_write_text(run.tokenizer_path, tok.to_str(pretty=True))
        say(
            f"rl: {len(self.task.items)} prompts from {self.task.path}, {self.rl.group} samples each, "
            f"up to {max_new} new tokens; held out: {', '.join(t.spec.name for t in self.evals)}"
        )
        return tok, RlData(self.task)

    def setup(self, env: Env) -> None:
        self.env = env
        rl = self.rl
        if rl.kl > 0:
            source = rl.reference or (str(self.init_source) if self.init_source else None)
            if source is None:
                raise SlmError("rl.kl > 0 needs a reference: set rl.reference or train.init")
            ref = load_model(source).model.to(env.device).eval()
            for p in ref.parameters():
                p.requires_grad_(False)
            self.reference, self.reference_hash = ref, weights_hash(ref)
            env.say(f"KL to the frozen reference {source} (weight {rl.kl})")

    def adapt(self, model: Transformer) -> None:
        super().adapt(model)
        self.policy = model  # the plain Transformer the engine samples from

    def _prompts(self, round_: int, index: int) -> list[int]:
        """The prompts of micro-batch `index` of a round: consecutive slices of one shuffle per epoch."""
        n, b = len(self.task.items), self.cfg.train.batch_size
        assert self.cfg.train.grad_accum is not None
        start = (round_ * self.cfg.train.grad_accum + index) * b
        return [self._order(epoch)[at] for epoch, at in (divmod(pos, n) for pos in range(start, start + b))]

    def _order(self, epoch: int) -> list[int]:
        """The prompts' order in an epoch: shuffled once per epoch, a function of the seed (the last two
        kept: a micro-batch may straddle two epochs)."""
        if epoch not in self.orders:
            order = list(range(len(self.task.items)))
            random.Random(self.cfg.train.seed * 1_000_003 + epoch).shuffle(order)
            self.orders = {e: o for e, o in self.orders.items() if e == epoch - 1} | {epoch: order}
        return self.orders[epoch]

    def batch(self, step: int, index: int) -> Batch:
        rl = self.rl
        round_ = step // rl.updates
        if (round_, index) in self.cached:
            return self.cached[(round_, index)]
        self.cached = {k: v for k, v in self.cached.items() if k[0] == round_}
        items = self._prompts(round_, index)
        ro = roll_out(
            self.policy,
            self.env.tokenizer,
            self.task,
            items,
            self.chat,
            self.stop_ids,
            rl,
            (self.cfg.train.seed, round_, index),
            self.tally,
        )
        for e in self.tally.errors:
            self.env.say(e)
        self.tally.errors.clear()
        device = self.env.device
        # Under the loop's autocast, so the sampling policy's log-probabilities match the loss's at ratio 1.
        cast = self.env.autocast if self.env.dtype == "bfloat16" else nullcontext()
        with torch.no_grad(), cast:
            if rl.updates > 1:
                ro.old_logprobs = completion_logprobs(self.policy, self.policy, ro.to(device), rl.temperature)[0].cpu()
            if self.reference is not None:
                ro.ref_logprobs = completion_logprobs(self.reference, self.reference, ro.to(device), rl.temperature)[
                    0
                ].cpu()
        if rl.updates > 1:
            self.cached[(round_, index)] = ro
        return ro

    def loss(self, forward: torch.nn.Module, model: Transformer, batch: Batch) -> torch.Tensor:
        assert isinstance(batch, Rollouts) and batch.advantages is not None
        rl = self.rl
        logp, entropy = completion_logprobs(forward, model, batch, rl.temperature)
        old = batch.old_logprobs if batch.old_logprobs is not None else logp.detach()
        parts = grpo_loss(
            logp,
            old,
            batch.advantages,
            batch.loss_mask,
            rl.clip,
            rl.clip_high,
            batch.ref_logprobs,
            rl.kl,
            rl.loss_agg,
            rl.max_new_tokens or self.task.spec.max_new_tokens,
        )
        self.micro += 1
        for k, v in (("kl", parts.kl), ("clip_fraction", parts.clip_fraction), ("entropy", float(entropy))):
            self.sums[k] = self.sums.get(k, 0.0) + v
        return parts.loss

    def end_step(self, step: int, loss: float) -> dict[str, float]:
        """The rollouts' and the loss's metrics, averaged since the last logged step."""
        done = step + 1
        if done % self.cfg.train.log_every and done != self.cfg.train.max_steps:
            return {}
        out = {k: v / max(self.micro, 1) for k, v in self.sums.items()}
        if self.tally.completions:
            out.update(self.tally.metrics())
        self.tally, self.sums, self.micro = Tally(), {}, 0
        return out

    def held_out(self, model: Transformer, final: bool) -> dict[str, float]:
        """Greedy accuracy on each held-out task (the first rl.eval_limit items; final: all of them)."""
        was_training = model.training
        out: dict[str, float] = {}
        for task in self.evals:
            items = task.items if final else task.items[: self.rl.eval_limit]
            part = Task(task.spec, items, task.path)
            chat = self.chat if task.spec.chat else None
            r = score_generate(model, self.env.tokenizer, part, self.stop_ids, max_batch=self.rl.max_batch, chat=chat)
            out[f"accuracy_{task.spec.name}"] = r["exact_match"]
        out["accuracy"] = out[f"accuracy_{self.evals[0].spec.name}"]
        model.train(was_training)
        return out

    def summary(self) -> dict[str, Any]:
        return {"rl_task": str(Path(self.task.path)), "reference": self.reference_hash}

    def state(self) -> dict:
        return {"reference_hash": self.reference_hash}

    def load_state(self, state: dict) -> None:
        saved = state.get("reference_hash")
        if saved != self.reference_hash:
            have = "no reference (rl.kl = 0)" if self.reference_hash is None else f"reference {self.reference_hash}"
            was = "no reference" if saved is None else f"reference {saved}"
            raise SlmError(
                f"this run was trained against {was}; resuming it with {have} would change its objective: "
                "resume with the run's own rl.reference and rl.kl, or start a new run"
            )
