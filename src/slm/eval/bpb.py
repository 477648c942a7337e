"""Bits-per-byte: the tokenizer-independent measure of how well a model predicts text.

bpb = (sum of the negative log-likelihoods of the target tokens, in bits) / (bytes those tokens spell).
Special tokens such as the document separator cost their log-likelihood but spell no bytes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from slm.data.shards import eval_windows
from slm.model.transformer import Transformer


@torch.no_grad()
def evaluate_tokens(
    model: Transformer,
    tokens: np.ndarray,
    byte_lengths: np.ndarray,
    seq_len: int,
    max_tokens: int | None = None,
    batch_size: int = 16,
    autocast: torch.autocast | None = None,
) -> dict[str, float]:
    """Mean loss (nats per token), perplexity and bits-per-byte over consecutive windows of a split."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    lengths = torch.from_numpy(byte_lengths.astype(np.int64))
    nll_sum, n_tok, n_bytes = 0.0, 0, 0
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def flush() -> None:
        nonlocal nll_sum, n_tok, n_bytes
        x = torch.cat([p[0] for p in pending]).to(device)
        y = torch.cat([p[1] for p in pending]).to(device)
        pending.clear()
        with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
            logits, _ = model(x)
        nll = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), reduction="sum")
        nll_sum += nll.item()
        n_tok += y.numel()
        n_bytes += int(lengths[y.cpu().view(-1)].sum())

    for x, y in eval_windows(tokens, seq_len, max_tokens):
        if pending and x.size(1) != pending[0][0].size(1):
            flush()  # the last, shorter window goes in a batch of its own
        pending.append((x, y))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    model.train(was_training)
    return lm_metrics(nll_sum, n_tok, n_bytes)


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
