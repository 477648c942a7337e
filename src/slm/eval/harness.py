"""Scoring tasks: multiple choice by log-likelihood, generation by exact match (text bits-per-byte is the
one scorer's, model/score.py).

Multiple choice runs each prompt once, keeps its KV cache, and scores every choice against that cache:
the prompt is never recomputed per choice, and a prefix many prompts share (instructions, few-shot
examples) runs once for all of them. Generative items decode together on the generation engine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from itertools import pairwise

import numpy as np
import torch
from tokenizers import Tokenizer

from slm.config import SamplingParams
from slm.errors import SlmError
from slm.eval.tasks import Item, Task
from slm.infer.engine import Engine
from slm.infer.template import ChatFormat
from slm.model.transformer import KVCache, Transformer

MIN_SAVED = 256  # token positions a shared prefix must save before it earns a forward pass of its own
ROW_TOKENS = 128  # a batch of single-token items holds at most batch_size * ROW_TOKENS positions, padding included


def _encode_item(tok: Tokenizer, item: Item, prefix: str) -> tuple[list[int], list[list[int]]]:
    return (
        tok.encode(item.prompt, add_special_tokens=False).ids,
        [tok.encode(prefix + c, add_special_tokens=False).ids for c in item.choices],
    )


def _fit(ctx: list[int], conts: list[list[int]], limit: int) -> tuple[list[int], list[list[int]]]:
    """The prompt cut from the left so it and its longest choice fit the context; empty choices score token 0."""
    conts = [c or [0] for c in conts]
    longest = max(len(c) for c in conts)
    if longest >= limit:
        raise ValueError(f"a choice of {longest} tokens leaves no room for its prompt in {limit} tokens of context")
    ctx = ctx[-(limit - longest) :] if len(ctx) + longest > limit else ctx
    if not ctx:
        raise ValueError("the prompt encodes to no tokens; a choice needs a prompt to be scored against")
    return ctx, conts


def continuation_logprobs(
    model: Transformer, pairs: list[tuple[list[int], list[int]]], batch_size: int = 8
) -> list[tuple[float, bool]]:
    """(summed log-probability, whether greedy decoding would produce it) of each continuation given its
    context, as token ids; pairs sharing a context share its forward, and shared prefixes run once."""
    limit = model.cfg.max_seq_len
    by_ctx: dict[tuple[int, ...], list[int]] = {}
    for k, (ctx, _) in enumerate(pairs):
        by_ctx.setdefault(tuple(ctx), []).append(k)
    groups = list(by_ctx.values())
    encoded = [_fit(list(pairs[g[0]][0]), [list(pairs[k][1]) for k in g], limit) for g in groups]
    scorer = _Scorer(model, encoded, batch_size, MIN_SAVED, lambda i: None)
    scores = scorer.run()
    out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    for gi, g in enumerate(groups):
        for j, k in enumerate(g):
            out[k] = (scores[gi][j], scorer.greedy[gi][j])
    return out


def choice_logprobs(model: Transformer, tok: Tokenizer, item: Item, prefix: str) -> list[float]:
    """Sum of log-probabilities of each choice's tokens given the prompt, for one item on its own."""
    ctx, conts = _fit(*_encode_item(tok, item, prefix), model.cfg.max_seq_len)
    return _Scorer(model, [(ctx, conts)], 1, MIN_SAVED, lambda i: None).run()[0]


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _fork(model: Transformer, cache: KVCache | None, depth: int, batch: int, length: int) -> KVCache:
    """A cache of `batch` rows and `length` positions whose first `depth` positions copy `cache`'s."""
    p = next(model.parameters())
    out = KVCache(model.cfg, batch, length, p.dtype, p.device)
    if cache is not None and depth:
        for dst, src in ((out.k, cache.k), (out.v, cache.v)):
            for layer in range(len(dst)):
                dst[layer][:, :, :depth] = src[layer][:, :, :depth]
    out.pos = depth
    return out


class _Scorer:
    """Scores multiple-choice items, running every prompt prefix that items share once.

    Prompts sorted by their tokens form a prefix tree (a task's instructions, a subject's header, its
    few-shot examples). A shared prefix that saves at least `min_saved` token positions runs once into
    a KV cache, and the items below it continue from that cache: a 5-shot prompt's examples cost one
    forward per subject instead of one per question. Items with one-token choices are then batched,
    right-padded, and read at their last real position; causal attention keeps the padding from
    touching any score. Longer choices run as a batch against their own prompt's cache.
    """

    def __init__(
        self,
        model: Transformer,
        encoded: list[tuple[list[int], list[list[int]]]],
        batch_size: int,
        min_saved: int,
        on_item: Callable[[int], None],
    ):
        self.model, self.batch_size, self.min_saved, self.on_item = model, batch_size, min_saved, on_item
        self.budget = batch_size * ROW_TOKENS
        self.device = next(model.parameters()).device
        self.ctxs = [c for c, _ in encoded]
        self.conts = [c for _, c in encoded]
        self.scores: list[list[float]] = [[] for _ in encoded]
        self.greedy: list[list[bool]] = [[] for _ in encoded]  # every choice token is the argmax

    @torch.no_grad()
    def run(self) -> list[list[float]]:
        order = sorted(range(len(self.ctxs)), key=lambda i: self.ctxs[i])
        self.group(order, 0, None)
        return self.scores

    def group(self, idx: list[int], depth: int, cache: KVCache | None) -> None:
        """Score items whose first `depth` tokens are in `cache`."""
        leaves: list[int] = []
        self.split(idx, depth, depth, cache, leaves)
        single = sorted((i for i in leaves if all(len(c) == 1 for c in self.conts[i])), key=lambda i: len(self.ctxs[i]))
        # Shortest first, a batch closes at batch_size items or at its position budget, so one long
        # prompt does not pad a whole batch of short ones to its length.
        batch: list[int] = []
        for i in single:
            if batch and (
                len(batch) == self.batch_size or (len(batch) + 1) * (len(self.ctxs[i]) - depth) > self.budget
            ):
                self.single_tokens(batch, depth, cache)
                batch = []
            batch.append(i)
        if batch:
            self.single_tokens(batch, depth, cache)
        for i in leaves:
            if not self.scores[i]:
                self.choices(i, depth, cache)

    def split(self, idx: list[int], level: int, depth: int, cache: KVCache | None, leaves: list[int]) -> None:
        """Runs of items sharing more than `level` tokens get a cache of their own when it saves enough.

        A run not worth one (a header few items share) is searched deeper: its items may still share a
        longer prefix in smaller runs (each subject's few-shot examples under a common header).
        """
        # In a sorted list, the prefix a run of items shares is the least of its neighbours' prefixes.
        adj = [_lcp(self.ctxs[a], self.ctxs[b]) for a, b in pairwise(idx)]
        start = 0
        for end in range(len(idx)):
            if end < len(adj) and adj[end] > level:
                continue
            run = idx[start : end + 1]
            shared = min([*adj[start:end], min(len(self.ctxs[i]) for i in run) - 1])
            if len(run) > 1 and (len(run) - 1) * (shared - depth) >= self.min_saved:
                # Holds the prefix only: the items below fork their own caches from it.
                child = _fork(self.model, cache, depth, 1, shared)
                self.model.hidden(torch.tensor([self.ctxs[run[0]][depth:shared]], device=self.device), cache=child)
                self.group(run, shared, child)
            elif len(run) > 1 and shared > level:
                self.split(run, shared, depth, cache, leaves)
            else:
                leaves += run
            start = end + 1

    def single_tokens(self, idx: list[int], depth: int, cache: KVCache | None) -> None:
        rows = [self.ctxs[i][depth:] for i in idx]
        width = max(len(r) for r in rows)
        batch_cache = _fork(self.model, cache, depth, len(idx), depth + width) if depth else None
        x = torch.tensor([r + [r[-1]] * (width - len(r)) for r in rows], device=self.device)
        last = torch.tensor([len(r) - 1 for r in rows], device=self.device)
        # Only the last position's logits are needed: the vocabulary projection runs on one row per item.
        h = self.model.hidden(x, cache=batch_cache)[torch.arange(len(idx), device=self.device), last]
        logp = torch.log_softmax(self.model.lm_head(h).float(), -1)
        best = logp.argmax(-1).tolist()
        for row, i in enumerate(idx):
            self.scores[i] = [float(logp[row, c[0]]) for c in self.conts[i]]
            self.greedy[i] = [c[0] == best[row] for c in self.conts[i]]
            self.on_item(i)

    def choices(self, i: int, depth: int, cache: KVCache | None) -> None:
        ctx, conts = self.ctxs[i], self.conts[i]
        longest = max(len(c) for c in conts)
        own = _fork(self.model, cache, depth, 1, len(ctx) + longest)
        h = self.model.hidden(torch.tensor([ctx[depth:]], device=self.device), cache=own)
        first = torch.log_softmax(self.model.lm_head(h[0, -1]).float(), -1)
        scores = [float(first[c[0]]) for c in conts]
        top = int(first.argmax())
        greedy = [c[0] == top for c in conts]
        if longest > 1:
            n = len(conts)
            own.k = [k.expand(n, -1, -1, -1).contiguous() for k in own.k]
            own.v = [v.expand(n, -1, -1, -1).contiguous() for v in own.v]
            # Each choice's tokens after the first, right-padded after the real tokens.
            rows = torch.tensor([c[:-1] + [c[-1]] * (longest - len(c)) for c in conts], device=self.device)
            logits, _ = self.model(rows[:, : longest - 1], cache=own)
            logp = torch.log_softmax(logits.float(), -1)
            best = logp.argmax(-1).tolist()
            for r, c in enumerate(conts):
                scores[r] += sum(float(logp[r, j - 1, c[j]]) for j in range(1, len(c)))
                greedy[r] = greedy[r] and all(best[r][j - 1] == c[j] for j in range(1, len(c)))
        self.scores[i] = scores
        self.greedy[i] = greedy
        self.on_item(i)


def score_multiple_choice(
    model: Transformer,
    tok: Tokenizer,
    task: Task,
    on_item: Callable[[], None] | None = None,
    batch_size: int = 8,
    min_saved: int = MIN_SAVED,
    samples: list[dict] | None = None,
) -> dict[str, float]:
    """Accuracy (and lm-eval's acc_norm, and answer bits-per-byte) by log-likelihood of each choice; with
    samples, one record per item is appended to it (what `slm eval --samples` writes)."""
    prefix = task.spec.choice_prefix
    encoded = []
    for i, item in enumerate(task.items):
        try:
            encoded.append(_fit(*_encode_item(tok, item, prefix), model.cfg.max_seq_len))
        except ValueError as e:
            raise SlmError(f"task {task.spec.name} ({task.path}), item {i + 1}: {e}") from None
    scores = _Scorer(model, encoded, batch_size, min_saved, lambda i: on_item() if on_item else None).run()
    correct = correct_norm = 0
    answer_bits = answer_bytes = 0.0
    for i, (item, lp) in enumerate(zip(task.items, scores, strict=True)):
        assert isinstance(item.answer, int)
        lengths = [len((prefix + c).encode("utf-8")) for c in item.choices]
        right = int(np.argmax(lp)) == item.answer
        correct += right
        # lm-evaluation-harness's acc_norm: log-likelihood per byte of the choice.
        correct_norm += int(np.argmax([s / max(n, 1) for s, n in zip(lp, lengths, strict=True)])) == item.answer
        if samples is not None:
            samples.append(sample_record(task, i, item, {"logprobs": [float(x) for x in lp]}, right))
        answer_bits -= lp[item.answer] / math.log(2)
        answer_bytes += lengths[item.answer]
    n = len(task.items)
    # answer_bpb: bits per byte of the right answers given their prompts. Smooth where accuracy is a step
    # function, so it is the task's loss when small models are compared (slm mix's task target).
    return {
        "acc": correct / n,
        "acc_stderr": stderr(correct / n, n),
        "acc_norm": correct_norm / n,
        "acc_norm_stderr": stderr(correct_norm / n, n),
        "answer_bpb": answer_bits / max(answer_bytes, 1),
        "n": n,
    }


def sample_record(task: Task, index: int, item: Item, scored: dict, correct: bool) -> dict:
    """One line of `slm eval --samples`: the item, how it was scored, and whether it was right."""
    return {
        "task": task.spec.name,
        "index": index,
        "prompt": item.prompt,
        "answer": item.answer,
        **scored,
        "correct": bool(correct),
    }


def paired_difference(a: list[bool], b: list[bool]) -> dict[str, float]:
    """Accuracy of a minus accuracy of b on the same items, with the standard error of that difference
    computed from the per-item differences: two models' errors on the same items are correlated, so this is
    smaller than the unpaired sqrt(se_a^2 + se_b^2) and the honest error bar for "is a better than b"."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired scores need the same items ({len(a)} against {len(b)})")
    d = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else float("nan")
    return {
        "difference": mean,
        "difference_stderr": math.sqrt(var / n),
        "only_a": sum(x > 0 for x in d),
        "only_b": sum(x < 0 for x in d),
        "n": n,
    }


def stderr(p: float, n: int) -> float:
    """Standard error of a mean of n 0/1 scores (sample standard deviation / sqrt(n), as lm-eval reports)."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")


def extract_answer(text: str, pattern: str | None) -> str:
    if pattern:
        m = re.search(pattern, text)
        if not m:
            return ""
        return (m.group(1) if m.groups() else m.group(0)).strip()
    return text.strip()


def judge(task: Task, item: Item, text: str) -> bool:
    """Is `text` a right reply to a generative item: the task's checker (data/checkers.py) when it names
    one, else exact match of what answer_regex extracts. Evaluation, RL rewards and synthetic data agree
    because they all judge here. A checker may raise; callers that must survive it catch."""
    if task.spec.checker is not None:
        from slm.data.checkers import CHECKERS

        return bool(CHECKERS[task.spec.checker]({**(item.row or {}), "answer": item.answer}, text))
    return extract_answer(text, task.spec.answer_regex) == str(item.answer).strip()


def has_answer(task: Task, text: str) -> bool:
    """Does the reply state an answer at all: the "Answer:" line slm's task formats end with (checker tasks),
    or a match of answer_regex. A reply without one is counted apart from a wrong one."""
    if task.spec.checker is not None:
        from slm.data.checkers import ANSWER_MARK

        return ANSWER_MARK in text
    return extract_answer(text, task.spec.answer_regex) != ""


def item_prompt(item: Item, chat: ChatFormat | None) -> str | list[int]:
    """What the model continues for a generative item: its prompt as a user message in the chat template
    (a task with `chat: true`), else its prompt text."""
    return chat.prompt_ids([{"role": "user", "content": item.prompt}]) if chat else item.prompt


def score_generate(
    model: Transformer,
    tok: Tokenizer,
    task: Task,
    stop_ids: set[int],
    on_item: Callable[[], None] | None = None,
    max_batch: int = 16,
    chat: ChatFormat | None = None,
    samples: list[dict] | None = None,
) -> dict[str, float]:
    """Greedy generation for every item, batched on the engine, then exact match after answer_regex, or
    the task's checker. chat: how a task with `chat: true` renders its prompt as a user message. samples:
    one record per item is appended to it, the reply included."""
    params = SamplingParams(max_tokens=task.spec.max_new_tokens, temperature=0.0, stop=task.spec.stop)
    correct = 0
    with Engine(model, tok, stop_ids, max_batch=max_batch) as engine:
        prompts = [item_prompt(item, chat) for item in task.items]
        ids = [engine.submit(p, params, truncate=True) for p in prompts]
        for event in engine.stream():
            if event.finish_reason is not None and on_item:
                on_item()
        for k, (i, item) in enumerate(zip(ids, task.items, strict=True)):
            reply = engine.result(i).text
            right = judge(task, item, reply)
            correct += right
            if samples is not None:
                samples.append(sample_record(task, k, item, {"reply": reply}, right))
    n = len(task.items)
    return {"exact_match": correct / n, "exact_match_stderr": stderr(correct / n, n), "n": n}
