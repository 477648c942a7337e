"""Rollouts: a group of sampled completions per prompt from the generation engine, judged, turned into a
training batch.

A batch of rollouts is a `Batch` (data/batch.py) whose rows are prompt + completion, with the completion
tokens as targets and the prompt as IGNORE, plus one advantage per row and, where they are needed, the
log-probabilities of the policy that sampled them and of the reference. It lives here, not in data/,
because making one needs the engine and the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from tokenizers import Tokenizer

from slm.config import RlConfig, SamplingParams
from slm.data.batch import IGNORE, Batch
from slm.eval.harness import has_answer, item_prompt, judge
from slm.eval.tasks import Item, Task
from slm.infer.engine import Engine
from slm.infer.sampling import seed_for
from slm.infer.template import ChatFormat
from slm.model.transformer import Transformer
from slm.rl.grpo import group_advantages


@dataclass
class Rollouts(Batch):
    advantages: torch.Tensor | None = None  # (N,) one per completion
    old_logprobs: torch.Tensor | None = None  # (N, T) of the sampling policy; None: the policy being trained
    ref_logprobs: torch.Tensor | None = None  # (N, T) of the frozen reference (KL penalty only)

    def to(self, device: torch.device) -> Rollouts:
        moved = super().to(device)
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return replace(
            moved,
            advantages=move(self.advantages),
            old_logprobs=move(self.old_logprobs),
            ref_logprobs=move(self.ref_logprobs),
        )


@dataclass
class Tally:
    """What rollouts produced since the metrics were last logged."""

    completions: int = 0
    reward: float = 0.0
    right: int = 0
    no_answer: int = 0
    checker_errors: int = 0
    groups: int = 0
    flat_groups: int = 0
    tokens: int = 0
    truncated: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first few checker failures, with their items

    def metrics(self) -> dict[str, float]:
        n = max(self.completions, 1)
        return {
            "reward": self.reward / n,
            "accuracy": self.right / n,
            "response_length": self.tokens / n,
            "no_answer": self.no_answer / n,
            "truncated": self.truncated / n,
            "flat_groups": self.flat_groups / max(self.groups, 1),
            "checker_errors": float(self.checker_errors),
            "completions_per_sec": self.completions / max(self.seconds, 1e-9),
        }


def prompt_ids(item: Item, task: Task, tok: Tokenizer, chat: ChatFormat | None) -> list[int]:
    ids = item_prompt(item, chat if task.spec.chat else None)
    return ids if isinstance(ids, list) else tok.encode(ids, add_special_tokens=False).ids


def reward_of(task: Task, item: Item, text: str, rl: RlConfig, tally: Tally, where: str) -> float:
    """1 for a right answer (plus format_reward for stating one); a checker that raises scores 0 and is
    counted with the item named, and the run goes on."""
    stated = has_answer(task, text)
    try:
        right = judge(task, item, text)
    except Exception as e:  # a user's checker may raise anything; one bad item must not end the run
        right = False
        tally.checker_errors += 1
        if len(tally.errors) < 5:
            tally.errors.append(f"{where}: checker {task.spec.checker} raised {type(e).__name__}: {e}")
    tally.right += right
    tally.no_answer += not stated
    return float(right) + (rl.format_reward if stated else 0.0)


def completion_logprobs(
    forward: Callable, model: Transformer, batch: Batch, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) log-probability of each target token at `temperature` (0 elsewhere), and the mean entropy of
    the distributions at target positions. The vocabulary projection runs on target positions only, and the
    log-probabilities carry gradients unless the caller runs under torch.no_grad()."""
    h, _ = forward(batch.inputs, hidden_only=True)
    keep = batch.loss_mask
    logits = model.logits(h[keep]).float() / temperature
    lp = torch.log_softmax(logits, dim=-1)
    chosen = lp.gather(1, batch.targets[keep][:, None]).squeeze(1)
    out = torch.zeros(batch.targets.shape, dtype=chosen.dtype, device=chosen.device)
    out = out.masked_scatter(keep, chosen)
    entropy = -(lp.detach().exp() * lp.detach()).sum(-1).mean() if len(lp) else torch.zeros(())
    return out, entropy


def roll_out(
    model: Transformer,
    tok: Tokenizer,
    task: Task,
    items: list[int],
    chat: ChatFormat | None,
    stop_ids: set[int],
    rl: RlConfig,
    seed: tuple,
    tally: Tally,
) -> Rollouts:
    """rl.group samples of each of task.items[i] for i in items, judged; rows of groups whose rewards are
    all equal are left out (they carry no advantage), except one when nothing else is left, so every
    micro-batch still has a (zero) loss."""
    max_new = rl.max_new_tokens or task.spec.max_new_tokens
    prompts = [prompt_ids(task.items[i], task, tok, chat) for i in items]
    params = [
        SamplingParams(
            max_tokens=max_new,
            temperature=rl.temperature,
            top_p=rl.top_p,
            seed=seed_for(*seed, k, j),
            stop=task.spec.stop,
        )
        for k in range(len(items))
        for j in range(rl.group)
    ]
    t0 = time.perf_counter()
    was_training = model.training
    with Engine(model, tok, stop_ids, max_batch=rl.max_batch) as engine:
        done = engine.run([p for p in prompts for _ in range(rl.group)], params)
    model.train(was_training)
    tally.seconds += time.perf_counter() - t0
    rewards = []
    for n, c in enumerate(done):
        k = n // rl.group
        rewards.append(reward_of(task, task.items[items[k]], c.text, rl, tally, f"{task.path} item {items[k] + 1}"))
        tally.tokens += len(c.tokens)
        tally.truncated += c.finish_reason == "length"
    r = torch.tensor(rewards, dtype=torch.float32).view(len(items), rl.group)
    adv = group_advantages(r, rl.scale_rewards)
    flat = (r == r[:, :1]).all(dim=1)
    tally.completions += len(done)
    tally.reward += float(r.sum())
    tally.groups += len(items)
    tally.flat_groups += int(flat.sum())
    keep_groups = [k for k in range(len(items)) if not flat[k]] or [0]
    rows = [(prompts[k], done[k * rl.group + j].tokens, float(adv[k, j])) for k in keep_groups for j in range(rl.group)]
    width = max(len(p) + len(t) for p, t, _ in rows) - 1
    inputs = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    real = 0
    for i, (p, t, _) in enumerate(rows):
        seq = torch.tensor(p + t, dtype=torch.long)
        n = len(seq) - 1
        inputs[i, :n] = seq[:-1]
        targets[i, len(p) - 1 : n] = seq[len(p) :]
        real += n
    return Rollouts(
        inputs, targets, real_tokens=real, advantages=torch.tensor([a for _, _, a in rows], dtype=torch.float32)
    )
