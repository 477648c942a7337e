"""Scoring: multiple choice by log-likelihood, generation by exact match, text by bits-per-byte.

Multiple choice runs the shared prompt once, keeps its KV cache, and scores every choice against that
cache in one batched forward: the prompt is never recomputed per choice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from slm.errors import SlmError
from slm.eval.bpb import lm_metrics
from slm.eval.tasks import Item, Task
from slm.infer.generate import generate_text
from slm.model.transformer import KVCache, Transformer
from slm.tokenizer import token_byte_lengths


def _encode_item(tok: Tokenizer, item: Item, prefix: str) -> tuple[list[int], list[list[int]]]:
    return (
        tok.encode(item.prompt, add_special_tokens=False).ids,
        [tok.encode(prefix + c, add_special_tokens=False).ids for c in item.choices],
    )


@torch.no_grad()
def choice_logprobs(model: Transformer, tok: Tokenizer, item: Item, prefix: str) -> list[float]:
    """Sum of log-probabilities of each choice's tokens given the prompt."""
    ctx, conts = _encode_item(tok, item, prefix)
    conts = [c or [0] for c in conts]
    longest = max(len(c) for c in conts)
    limit = model.cfg.max_seq_len
    if longest >= limit:
        raise ValueError(f"a choice of {longest} tokens leaves no room for its prompt in {limit} tokens of context")
    ctx = ctx[-(limit - longest) :] if len(ctx) + longest > limit else ctx
    if not ctx:
        raise ValueError("the prompt encodes to no tokens; a choice needs a prompt to be scored against")
    device = next(model.parameters()).device
    cache = KVCache(model.cfg, 1, len(ctx) + longest, next(model.parameters()).dtype, device)
    h = model.hidden(torch.tensor([ctx], device=device), cache=cache)
    first = torch.log_softmax(model.lm_head(h[0, -1]).float(), -1)
    n = len(conts)
    cache.k = [k.expand(n, -1, -1, -1).contiguous() for k in cache.k]
    cache.v = [v.expand(n, -1, -1, -1).contiguous() for v in cache.v]
    scores = [float(first[c[0]]) for c in conts]
    if longest > 1:
        # Each choice's tokens after the first, right-padded; padding sits after the real tokens, so
        # causal attention keeps it from touching any score we read.
        rows = torch.tensor([c[:-1] + [c[-1]] * (longest - len(c)) for c in conts], device=device)
        logits, _ = model(rows[:, : longest - 1], cache=cache)
        logp = torch.log_softmax(logits.float(), -1)
        for i, c in enumerate(conts):
            for j in range(1, len(c)):
                scores[i] += float(logp[i, j - 1, c[j]])
    return scores


def common_prefix(rows: list[list[int]]) -> int:
    """Length of the token prefix every row shares, leaving each row at least one token of its own."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(max(n, 0)):
        if any(r[i] != first[i] for r in rows[1:]):
            return i
    return max(n, 0)


@torch.no_grad()
def single_token_logprobs(
    model: Transformer, batch: list[tuple[list[int], list[int]]], min_shared: int = 8
) -> list[list[float]]:
    """Items whose choices are one token each: one right-padded forward for the whole batch.

    Causal attention keeps padding after a prompt from touching it, so each row's logits at its last
    real position are exactly those of an unpadded forward. A prefix every prompt shares (a task's
    instructions, few-shot examples) runs once, and the rows continue from its KV cache.
    """
    limit = model.cfg.max_seq_len
    ctxs = [c[-limit:] for c, _ in batch]
    device = next(model.parameters()).device
    shared = common_prefix(ctxs) if len(ctxs) > 1 else 0
    cache = None
    if shared >= min_shared:
        width = max(len(c) for c in ctxs)
        cache = KVCache(model.cfg, 1, width, next(model.parameters()).dtype, device)
        model.hidden(torch.tensor([ctxs[0][:shared]], device=device), cache=cache)
        cache.k = [k.expand(len(ctxs), -1, -1, -1).contiguous() for k in cache.k]
        cache.v = [v.expand(len(ctxs), -1, -1, -1).contiguous() for v in cache.v]
        ctxs = [c[shared:] for c in ctxs]
    width = max(len(c) for c in ctxs)
    rows = torch.tensor([c + [c[-1]] * (width - len(c)) for c in ctxs], device=device)
    last = torch.tensor([len(c) - 1 for c in ctxs], device=device)
    # Only the last position's logits are needed: the vocabulary projection runs on one row per item.
    h = model.hidden(rows, cache=cache)[torch.arange(len(ctxs), device=device), last]
    logp = torch.log_softmax(model.lm_head(h).float(), -1)
    return [[float(logp[i, t]) for t in choices] for i, (_, choices) in enumerate(batch)]


def score_multiple_choice(
    model: Transformer, tok: Tokenizer, task: Task, on_item: Callable[[], None] | None = None, batch_size: int = 8
) -> dict[str, float]:
    prefix = task.spec.choice_prefix
    encoded = [_encode_item(tok, item, prefix) for item in task.items]
    scores: list[list[float] | None] = [None] * len(task.items)
    single = [i for i, (ctx, conts) in enumerate(encoded) if ctx and all(len(c) == 1 for c in conts)]
    # Similar lengths together keep padding small; results go back to their items, so order is unchanged.
    single.sort(key=lambda i: len(encoded[i][0]))
    for start in range(0, len(single), batch_size):
        idx = single[start : start + batch_size]
        batch = [(encoded[i][0], [c[0] for c in encoded[i][1]]) for i in idx]
        for i, lp in zip(idx, single_token_logprobs(model, batch), strict=True):
            scores[i] = lp
            if on_item:
                on_item()
    for i, item in enumerate(task.items):
        if scores[i] is None:
            try:
                scores[i] = choice_logprobs(model, tok, item, prefix)
            except ValueError as e:
                raise SlmError(f"task {task.spec.name} ({task.path}), item {i + 1}: {e}") from None
            if on_item:
                on_item()
    correct = correct_norm = 0
    answer_bits = answer_bytes = 0.0
    for item, lp in zip(task.items, scores, strict=True):
        assert lp is not None and isinstance(item.answer, int)
        lengths = [len((prefix + c).encode("utf-8")) for c in item.choices]
        correct += int(np.argmax(lp)) == item.answer
        # lm-evaluation-harness's acc_norm: log-likelihood per byte of the choice.
        correct_norm += int(np.argmax([s / max(n, 1) for s, n in zip(lp, lengths, strict=True)])) == item.answer
        answer_bits -= lp[item.answer] / math.log(2)
        answer_bytes += lengths[item.answer]
    n = len(task.items)
    # answer_bpb: bits per byte of the right answers given their prompts. Smooth where accuracy is a step
    # function, so it is the task's loss when small models are compared (slm mix's task target).
    return {"acc": correct / n, "acc_norm": correct_norm / n, "answer_bpb": answer_bits / max(answer_bytes, 1), "n": n}


def extract_answer(text: str, pattern: str | None) -> str:
    if pattern:
        m = re.search(pattern, text)
        if not m:
            return ""
        return (m.group(1) if m.groups() else m.group(0)).strip()
    return text.strip()


def score_generate(
    model: Transformer, tok: Tokenizer, task: Task, eos: int | None, on_item: Callable[[], None] | None = None
) -> dict[str, float]:
    correct = 0
    for item in task.items:
        out = generate_text(
            model,
            tok,
            item.prompt,
            task.spec.max_new_tokens,
            temperature=0.0,
            top_k=None,
            top_p=None,
            stop=task.spec.stop,
            eos_id=eos,
        )
        correct += extract_answer(out, task.spec.answer_regex) == str(item.answer).strip()
        if on_item:
            on_item()
    return {"exact_match": correct / len(task.items), "n": len(task.items)}


DEFAULT_WINDOW = 1024  # long contexts (SmolLM2 has 8192) cost quadratic time on a CPU for little gain in bpb


@torch.no_grad()
def text_bpb(
    model: Transformer, tok: Tokenizer, text: str, bos: int, window: int | None = None, stride: int | None = None
) -> dict[str, float]:
    """Bits-per-byte of a text of any length, scored in sliding windows.

    Every token is predicted once, with up to window-stride tokens of earlier context carried over
    from the previous window. A start token (the tokenizer's end-of-text) lets the first token count too.
    """
    window = min(window or DEFAULT_WINDOW, model.cfg.max_seq_len)
    stride = min(stride or window // 2, window)
    ids = [bos, *tok.encode(text, add_special_tokens=False).ids]
    lengths = torch.from_numpy(token_byte_lengths(tok).astype(np.int64))
    device = next(model.parameters()).device
    nll, scored, prev_end = 0.0, 0, 1  # prev_end: first target index not yet scored
    begin = 0
    while prev_end < len(ids):
        end = min(begin + window + 1, len(ids))
        chunk = torch.tensor([ids[begin:end]], device=device)
        logits, _ = model(chunk[:, :-1])
        targets = chunk[0, 1:]
        new = end - prev_end  # the last `new` targets were not scored by an earlier window
        lp = F.cross_entropy(logits[0, -new:].float(), targets[-new:], reduction="sum")
        nll += float(lp)
        scored += new
        prev_end = end
        begin += stride
    return lm_metrics(nll, scored, int(lengths[torch.tensor(ids[1:])].sum()))
