"""Choosing the next token of each sequence from its logits, each with its own sampling parameters.

Greedy rows are decided together (one argmax); sampled rows each draw from their own generator, so a
sequence's text depends on its seed alone, never on which other sequences share its batch, nor on whether
speculative decoding guessed its tokens.
"""

from __future__ import annotations

import hashlib

import torch
from pydantic import ValidationError

from slm.config import SamplingParams
from slm.errors import SlmError

MIN_TEMPERATURE = 1e-6  # a smaller one would underflow float32 (and is greedy in all but name)


def sampling_params(**fields) -> SamplingParams:
    """SamplingParams from loose values (CLI options, request fields): a bad value is one line naming it."""
    try:
        return SamplingParams(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        name = ".".join(str(x) for x in first["loc"])
        raise SlmError(f"sampling parameter {name}: {first['msg'].lower()} (got {first.get('input')!r})") from None


def filtered_probs(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The distribution a (V,) logit row is sampled from: temperature, then top-k, then top-p. Scaled from
    the largest logit down, so no temperature, however small, overflows (the top token then takes all)."""
    logits = (logits.float() - logits.max()) / max(p.temperature, MIN_TEMPERATURE)
    if p.top_k is not None and p.top_k < logits.numel():
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.top_p is not None and p.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p, and always the top token (a top_p too small
        # for float32 would otherwise drop every one).
        drop = sorted_p.cumsum(0) - sorted_p >= p.top_p
        drop[0] = False
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return probs


def choose(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """One token id per row of (n, V) logits."""
    out = [0] * len(params)
    greedy = [i for i, p in enumerate(params) if p.temperature == 0]
    if greedy:
        picks = logits[greedy].argmax(dim=-1).tolist()
        for i, t in zip(greedy, picks, strict=True):
            out[i] = t
    for i, p in enumerate(params):
        if p.temperature == 0:
            continue
        out[i] = sample(logits[i], p, generators[i])
    return out


def sample(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> int:
    """One draw from the filtered distribution of a (V,) logit row, by the Gumbel-max trick: the argmax of
    log-probabilities plus Gumbel noise. Every draw takes exactly V uniforms from the generator, so the i-th
    token of a sequence uses the i-th block of its seed's stream whatever happened before; speculative
    decoding relies on that to give the very text plain decoding gives for a seed."""
    probs = filtered_probs(logits.cpu(), p)
    u = torch.rand(probs.shape, generator=generator).clamp_(min=1e-20)
    return int((probs.log() - (-u.log()).log()).argmax())


def check_finite(logits: torch.Tensor, where: str) -> None:
    bad = ~torch.isfinite(logits).all(dim=-1)
    if bool(bad.any()):
        raise SlmError(
            f"the model produced non-finite logits ({where}); its weights or inputs hold NaN or infinity: "
            "check the checkpoint (an earlier one may be intact)"
        )


def seed_for(*parts: object) -> int:
    """A sampling seed from where a sample sits (a run's seed, a round, a prompt, a sample): the same in every
    process and on every resume, and unrelated for neighbouring positions."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1
