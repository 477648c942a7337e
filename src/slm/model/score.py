"""The one scorer of text: how well a model predicts token sequences, in sliding windows.

Every token after a sequence's first is predicted once. A sequence longer than the window is cut into
windows that start `stride` tokens apart; with stride < window each window carries window - stride tokens
of earlier context and scores only its new tokens. Windows of the same length from any sequences run
through the model together, and the vocabulary projection runs only on the positions being scored, a
bounded number at a time, so a 49k-token vocabulary never needs a (batch x window x vocabulary) matrix.

Bits-per-byte = summed negative log-likelihood in bits / the UTF-8 bytes the predicted tokens spell, so
models with different tokenizers compare fairly. Special tokens cost their likelihood but spell no bytes.

Used by training's validation figure, `slm eval --text`, `slm select` and the benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from slm.model.transformer import Transformer
from slm.tokenizer import token_byte_lengths

HEAD_ELEMENTS = 1 << 25  # logits alive at once (128 MB of fp32): rows = HEAD_ELEMENTS // vocabulary
DEFAULT_WINDOW = 1024  # long contexts (SmolLM2 has 8192) cost quadratic time on a CPU for little gain in bpb


def windows_of(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, new) for a sequence of n tokens: tokens begin..end-1 go in, the last `new` targets count."""
    out = []
    begin, prev_end = 0, 1
    while prev_end < n:
        end = min(begin + window + 1, n)
        out.append((begin, end, end - prev_end))
        prev_end = end
        begin += stride
    return out


@torch.no_grad()
def score(
    model: Transformer,
    seqs: Sequence[Sequence[int] | np.ndarray],
    window: int,
    stride: int | None = None,
    batch_size: int = 16,
    autocast: torch.autocast | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[float, int]]:
    """(summed negative log-likelihood in nats, tokens predicted) of each sequence; progress(windows done,
    windows) after each batch."""
    stride = min(stride or window, window)
    if not 1 <= window <= model.cfg.max_seq_len:
        raise ValueError(f"window {window} must be between 1 and model.max_seq_len={model.cfg.max_seq_len}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [[0.0, 0] for _ in seqs]
    pieces = [(i, *w) for i, s in enumerate(seqs) for w in windows_of(len(s), window, stride)]
    pieces.sort(key=lambda p: p[2] - p[1])  # stable: equal lengths keep their order, so batches are too
    head_rows = max(1, HEAD_ELEMENTS // model.vocab_size)
    start = 0
    while start < len(pieces):
        length = pieces[start][2] - pieces[start][1]
        stop = start
        while stop < len(pieces) and stop - start < batch_size and pieces[stop][2] - pieces[stop][1] == length:
            stop += 1
        batch = pieces[start:stop]
        rows = torch.from_numpy(np.stack([np.asarray(seqs[i][b:e], dtype=np.int64) for i, b, e, _ in batch])).to(device)
        with autocast if autocast is not None else nullcontext():
            h = model.hidden(rows[:, :-1])
        # Only the scored positions meet the vocabulary: the last `new` of each window.
        keep = torch.zeros(rows.size(0), length - 1, dtype=torch.bool, device=device)
        for r, (*_, new) in enumerate(batch):
            keep[r, length - 1 - new :] = True
        hs, ys = h[keep], rows[:, 1:][keep]
        owner = np.repeat([i for i, *_ in batch], [new for *_, new in batch])
        nll = torch.empty(len(ys), dtype=torch.float32, device=device)
        for a in range(0, len(ys), head_rows):
            with autocast if autocast is not None else nullcontext():
                logits = model.lm_head(hs[a : a + head_rows])
            nll[a : a + head_rows] = F.cross_entropy(logits.float(), ys[a : a + head_rows], reduction="none")
        sums = np.bincount(owner, weights=nll.double().cpu().numpy(), minlength=len(seqs))
        for i, *_, new in batch:
            out[i][1] += new
        for i in np.unique(owner):
            out[i][0] += float(sums[i])
        start = stop
        if progress:
            progress(stop, len(pieces))
    model.train(was_training)
    return [(float(a), int(b)) for a, b in out]


def score_masked(
    model: Transformer,
    seqs: Sequence[Sequence[int]],
    masks: Sequence[Sequence[bool]],
    batch_size: int = 8,
    autocast: torch.autocast | None = None,
) -> list[tuple[float, int]]:
    """(summed negative log-likelihood in nats, tokens scored) of each sequence, counting only the tokens
    whose mask is True (an answer given its prompt). Sequences must fit the model's context."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    head_rows = max(1, HEAD_ELEMENTS // model.vocab_size)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths share a batch
    out = [(0.0, 0)] * len(seqs)
    with torch.no_grad():
        for a in range(0, len(order), batch_size):
            idx = order[a : a + batch_size]
            width = max(len(seqs[i]) for i in idx)
            rows = torch.zeros(len(idx), width, dtype=torch.long)
            keep = torch.zeros(len(idx), width, dtype=torch.bool)
            for r, i in enumerate(idx):
                rows[r, : len(seqs[i])] = torch.as_tensor(list(seqs[i]))
                keep[r, : len(masks[i])] = torch.as_tensor(list(masks[i]), dtype=torch.bool)
            keep[:, 0] = False  # the first token has nothing before it
            rows, keep = rows.to(device), keep[:, 1:].to(device)
            with autocast if autocast is not None else nullcontext():
                h = model.hidden(rows[:, :-1])
            hs, ys = h[keep], rows[:, 1:][keep]
            owner = torch.arange(len(idx), device=device).unsqueeze(1).expand_as(keep)[keep]
            nll = torch.empty(len(ys), dtype=torch.float32, device=device)
            for b in range(0, len(ys), head_rows):
                with autocast if autocast is not None else nullcontext():
                    logits = model.lm_head(hs[b : b + head_rows])
                nll[b : b + head_rows] = F.cross_entropy(logits.float(), ys[b : b + head_rows], reduction="none")
            sums = torch.zeros(len(idx), dtype=torch.float64, device=device).index_add_(0, owner, nll.double())
            counts = keep.sum(1)
            for r, i in enumerate(idx):
                out[i] = (float(sums[r]), int(counts[r]))
    model.train(was_training)
    return out


def lm_metrics(nll_sum: float, n_tok: int, n_bytes: int) -> dict[str, float]:
    """Loss (nats per token), perplexity and bits-per-byte from summed NLL, predicted tokens and their bytes."""
    loss = nll_sum / max(n_tok, 1)
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 50.0)),
        "bpb": nll_sum / math.log(2) / max(n_bytes, 1),
        "tokens": n_tok,
        "bytes": n_bytes,
    }


def tokens_bpb(
    model: Transformer,
    tokens: np.ndarray,
    byte_lengths: np.ndarray,
    window: int,
    max_tokens: int | None = None,
    batch_size: int = 16,
    autocast: torch.autocast | None = None,
) -> dict[str, float]:
    """A token stream (a held-out split) in consecutive windows, or its first max_tokens predictions."""
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    ids = np.asarray(tokens[:n])
    ((nll, count),) = score(model, [ids], window, window, batch_size, autocast)
    return lm_metrics(nll, count, int(byte_lengths[ids[1:].astype(np.int64)].sum()))


def text_bpb(
    model: Transformer,
    tok: Tokenizer,
    text: str,
    bos: int,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
) -> dict[str, float]:
    """Bits-per-byte of a text of any length. A start token (the document separator) lets the first token
    count too; by default windows overlap by half, so each token after the first window sees at least
    half a window of context."""
    window = min(window or DEFAULT_WINDOW, model.cfg.max_seq_len)
    ids = np.array([bos, *tok.encode(text, add_special_tokens=False).ids], dtype=np.int64)
    ((nll, count),) = score(model, [ids], window, stride or max(1, window // 2), batch_size)
    return lm_metrics(nll, count, int(token_byte_lengths(tok)[ids[1:]].sum()))
