"""Training on a mixture of domains: a corpus folder of per-domain shards (from `slm data builtin` or
`slm data run`) read with fixed domain weights.

Each sequence of a batch draws its domain from the weights, then a random window inside that domain,
all from (seed, step, index), so a mixture run is as reproducible and resumable as a single-shard one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from slm.data.batch import Batch, windows
from slm.data.shards import Shards
from slm.errors import SlmError


def is_corpus(folder: Path) -> bool:
    """A corpus folder (per-domain shard folders under one manifest) rather than one shard folder."""
    try:
        return isinstance(json.loads((folder / "manifest.json").read_text()).get("domains"), dict)
    except (OSError, ValueError):
        return False


def corpus_domains(folder: Path) -> list[str]:
    mf = folder / "manifest.json"
    if not mf.is_file():
        raise SlmError(f"{folder} has no manifest.json; make a corpus with `slm data builtin` or `slm data run`")
    domains = json.loads(mf.read_text()).get("domains")
    if not isinstance(domains, dict) or not domains:
        raise SlmError(f"{mf} lists no domains; a mixture needs a folder of per-domain shards")
    return list(domains)


def natural_weights(folder: Path) -> dict[str, float]:
    """Each domain's share of the corpus's training tokens."""
    tokens = {d: Shards.open(folder / d).manifest["splits"]["train"]["tokens"] for d in corpus_domains(folder)}
    total = sum(tokens.values())
    return {d: t / total for d, t in tokens.items()}


def check_mixture(
    mixture: dict[str, float], domains: list[str], log: Callable[[str], None] = print
) -> dict[str, float]:
    """Known domains, no negative weight; weights that do not sum to one are normalised, and said so."""
    unknown = [d for d in mixture if d not in domains]
    if unknown:
        raise SlmError(
            f"data.mixture names unknown domain(s) {', '.join(unknown)}; the corpus has {', '.join(domains)}"
        )
    negative = {d: w for d, w in mixture.items() if w < 0}
    if negative:
        raise SlmError(f"data.mixture has negative weights {negative}; weights must be >= 0")
    total = sum(mixture.values())
    if total <= 0:
        raise SlmError("data.mixture weights sum to 0; give at least one domain a positive weight")
    if abs(total - 1.0) > 1e-6:
        log(f"note: data.mixture weights sum to {total:.4g}; normalised to 1")
    return {d: w / total for d, w in mixture.items()}


class MixtureBatcher:
    def __init__(self, parts: list[np.ndarray], weights: np.ndarray, seq_len: int, batch_size: int, seed: int):
        self.parts, self.weights = parts, weights
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed

    def batch(self, step: int, index: int) -> Batch:
        rng = np.random.default_rng([self.seed, step, index])
        which = rng.choice(len(self.parts), size=self.batch_size, p=self.weights)
        rows = []
        for d in which:
            toks = self.parts[d]
            s = int(rng.integers(0, len(toks) - self.seq_len))
            rows.append(toks[s : s + self.seq_len + 1])
        return windows(torch.from_numpy(np.stack(rows).astype(np.int64)))


class MixtureShards:
    """The interface of Shards (tokens, batcher, check_tokenizer) over a weighted set of domains."""

    def __init__(self, folder: Path, mixture: dict[str, float], val_domains: list[str], log=print):
        self.folder = folder
        domains = corpus_domains(folder)
        self.mixture = check_mixture(mixture, domains, log)
        self.domains = {d: Shards.open(folder / d) for d in domains}
        self.val_domains = val_domains or [d for d, w in self.mixture.items() if w > 0]
        missing = [d for d in self.val_domains if d not in domains]
        if missing:
            raise SlmError(f"data.val_domains names unknown domain(s) {', '.join(missing)}")
        for d in self.val_domains:
            if self.domains[d].manifest["splits"]["val"]["tokens"] == 0:
                raise SlmError(f"domain '{d}' has no held-out text; pick another target or re-make the corpus")
        self.manifest = {"tokenizer_hash": self.domains[domains[0]].manifest["tokenizer_hash"], "mixture": self.mixture}

    def tokens(self, split: str) -> np.ndarray:
        if split == "val":
            return np.concatenate([np.asarray(self.domains[d].tokens("val")) for d in self.val_domains])
        return np.concatenate([np.asarray(self.domains[d].tokens(split)) for d, w in self.mixture.items() if w > 0])

    def domain_val(self, domain: str) -> np.ndarray:
        return self.domains[domain].tokens("val")

    def batcher(self, seq_len: int, batch_size: int, seed: int) -> MixtureBatcher:
        names = [d for d, w in self.mixture.items() if w > 0]
        parts = [self.domains[d].tokens("train") for d in names]
        for d, p in zip(names, parts, strict=True):
            if len(p) < seq_len + 1:
                raise SlmError(f"domain '{d}' has {len(p)} training tokens, fewer than one window of {seq_len + 1}")
        w = np.array([self.mixture[d] for d in names], dtype=np.float64)
        return MixtureBatcher(parts, w / w.sum(), seq_len, batch_size, seed)

    def check_tokenizer(self, tok) -> None:
        for s in self.domains.values():
            s.check_tokenizer(tok)
