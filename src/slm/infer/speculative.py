"""Speculative decoding: cheap guesses of the next few tokens, checked by the model in one forward.

The engine asks a drafter for up to `tokens` guesses per sequence, runs the sequence's pending token and
its guesses through the model together, and keeps the longest run of guesses the model agrees with, plus
one token of the model's own (so every step yields at least one token, as plain decoding does). On a CPU,
decoding one token reads every weight for one row of arithmetic: checking five tokens costs little more
than one, so each accepted guess is nearly free.

Drafters:
- `NgramDrafter` needs no model. Prompt lookup: the latest earlier place where the sequence's last few
  tokens occurred proposes what followed them there (code and documents repeat names and phrases).
  Token Recycling (Luo et al., 2024): the model's own candidate tokens from earlier forwards are kept in an
  adjacency table (token -> its likeliest successors last time it was read); where lookup finds nothing,
  a chain through that table is the guess. The paper drafts a tree of such candidates; a chain keeps the
  check a plain causal forward (no tree mask, no cache compaction).
- `ModelDrafter`: a small model with the same tokenizer (for example one `slm distill` trained from the
  target) proposes greedily, keeping a KV cache of its own in step with the engine's rows.

Exact, greedy or sampled: at each position the model's own token is chosen as plain decoding would choose
it (argmax, or a draw that takes the same number of the sequence's random stream either way, see
sampling.sample), and a guess is kept only when it is that token. So a seed gives the very text it gives
without guesses; a guess d is kept with probability p(d), as the speculative sampling rule of Leviathan
et al. (2023) keeps a proposal that puts all its mass on d.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from slm.config import SamplingParams
from slm.errors import SlmError
from slm.infer.sampling import sample
from slm.model.load import load_model
from slm.model.transformer import KVCache, Transformer, grow_cache

if TYPE_CHECKING:
    from slm.infer.engine import SeqState


class Drafter(Protocol):
    """What the engine asks of a source of guesses. Rows are the engine's rows, in its order."""

    def propose(self, seqs: list[SeqState], room: list[int]) -> list[list[int]]:
        """Guesses of each row's next tokens after its pending one, at most room[i] of them."""
        ...

    def observe(self, inputs: torch.Tensor, logits: torch.Tensor) -> None:
        """The model's logits (N, V) after reading each of inputs (N,)."""
        ...

    def accepted(self, row: int, length: int) -> None:
        """Row `row` of the engine's cache now holds `length` positions."""
        ...

    def moved(self, dst: int, src: int) -> None:
        """The engine moved row src into row dst (src is now free)."""
        ...

    def reset(self, row: int) -> None:
        """Row `row` was just filled from a new context."""
        ...

    def forget(self, seq_id: int) -> None: ...

    def close(self) -> None: ...


LOOKUP_MAX = 3  # longest n-gram prompt lookup matches (it tries 3, then 2, then 1 tokens)
RECYCLE_WIDTH = 4  # successors the recycling table keeps per token


class NgramIndex:
    """Where each n-gram (n <= LOOKUP_MAX) of one sequence last ended, kept up to date token by token."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.last: dict[tuple[int, ...], int] = {}  # n-gram -> position just after its latest occurrence

    def extend(self, tokens: list[int]) -> None:
        for t in tokens:
            # The n-grams ending at the previous token go in now, so a lookup of the sequence's own final
            # n-gram finds an earlier occurrence, never itself.
            n_have = len(self.tokens)
            for n in range(1, min(LOOKUP_MAX, n_have) + 1):
                self.last[tuple(self.tokens[n_have - n :])] = n_have
            self.tokens.append(t)

    def propose(self, k: int) -> list[int]:
        toks = self.tokens
        for n in range(min(LOOKUP_MAX, len(toks)), 0, -1):
            at = self.last.get(tuple(toks[len(toks) - n :]))
            if at is not None:
                return toks[at : at + k]
        return []


class NgramDrafter:
    def __init__(self, vocab: int, tokens: int):
        self.tokens = tokens
        self.index: dict[int, NgramIndex] = {}
        self.next = torch.full((vocab, RECYCLE_WIDTH), -1, dtype=torch.long)

    def propose(self, seqs: list[SeqState], room: list[int]) -> list[list[int]]:
        out = []
        for s, r in zip(seqs, room, strict=True):
            k = min(self.tokens, r)
            if k <= 0:
                out.append([])
                continue
            ix = self.index.setdefault(s.id, NgramIndex())
            ix.extend((s.prompt + s.tokens)[len(ix.tokens) :])
            guess = ix.propose(k)
            if len(guess) < k:  # recycling continues (or replaces) what lookup found
                t = guess[-1] if guess else ix.tokens[-1]
                while len(guess) < k and (t := int(self.next[t, 0])) >= 0:
                    guess.append(t)
            out.append(guess)
        return out

    def observe(self, inputs: torch.Tensor, logits: torch.Tensor) -> None:
        """inputs (N,), logits (N, V): the model's likeliest successors of each token it just read."""
        self.next[inputs.cpu()] = logits.topk(RECYCLE_WIDTH, dim=-1).indices.cpu()

    def forget(self, seq_id: int) -> None:
        self.index.pop(seq_id, None)

    def accepted(self, row: int, length: int) -> None:  # keeps no per-row state
        pass

    def moved(self, dst: int, src: int) -> None:
        pass

    def reset(self, row: int) -> None:
        pass

    def close(self) -> None:
        self.index.clear()


class ModelDrafter:
    """A draft model's KV cache with one row per engine row. Row i holds `length[i]` positions of the
    engine row's context (which starts at the sequence's `origin` in prompt + tokens)."""

    CATCH_UP = 8  # rows further behind than this many tokens catch up alone (a prompt), the rest together

    def __init__(self, model: Transformer, target_vocab: int, tokens: int):
        if model.vocab_size > target_vocab + 1024 or model.vocab_size < target_vocab - 1024:
            raise SlmError(
                f"the draft model's vocabulary ({model.vocab_size}) is not the target's ({target_vocab}): "
                "a draft model must share the target's tokenizer"
            )
        self.model, self.tokens = model.eval(), tokens
        self.vocab = min(model.vocab_size, target_vocab)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.limit = model.cfg.max_seq_len
        self.packed = model.pack()
        self.cache: KVCache | None = None
        self.length: list[int] = []
        self.origin: list[int] = []

    def close(self) -> None:
        if self.packed:
            self.model.unpack()
        self.cache = None

    def propose(self, seqs: list[SeqState], room: list[int]) -> list[list[int]]:
        n = len(seqs)
        while len(self.length) < n:
            self.length.append(0)
            self.origin.append(-1)
        k = min(self.tokens, max(room))
        if k <= 0:
            return [[] for _ in seqs]
        length = max(s.length for s in seqs) + k + self.CATCH_UP + 1
        self.cache = grow_cache(self.cache, self.model.cfg, n, length, self.dtype, self.device, self.limit)
        live = [i for i, s in enumerate(seqs) if room[i] > 0 and s.length + k < self.limit]
        if not live:
            return [[] for _ in seqs]
        # Catch up: each row is fed what its cache lacks, through the pending token: a prompt alone, the
        # last step's few accepted tokens together with the other rows' (right-padded, where that fits).
        feeds = {}
        for i in live:
            s = seqs[i]
            if self.origin[i] != s.origin:
                self.origin[i], self.length[i] = s.origin, 0
            self.length[i] = min(self.length[i], s.length)  # past it: guesses the engine did not check
            feeds[i] = (s.prompt + s.tokens)[s.origin + self.length[i] : s.origin + s.length + 1]
        width = max(len(f) for f in feeds.values())
        last = torch.zeros(n, self.model.cfg.d_model, dtype=self.dtype, device=self.device)
        together = [i for i in live if len(feeds[i]) <= self.CATCH_UP and self.length[i] + width <= self.cache.length]
        for i in live:
            if i not in together:
                f = feeds[i]
                h = self.model.hidden(
                    torch.tensor([f], device=self.device), cache=self.cache.rows(i, i + 1, self.length[i])
                )
                last[i] = h[0, -1]
                self.length[i] += len(f)
        if together:
            width = max(len(feeds[i]) for i in together)
            x = torch.tensor(
                [feeds[i] + [feeds[i][-1]] * (width - len(feeds[i])) for i in together], device=self.device
            )
            h = self._forward(together, x)
            for j, i in enumerate(together):
                last[i] = h[j, len(feeds[i]) - 1]
                self.length[i] += len(feeds[i])
        # Then k greedy guesses, the draft model's cache following them.
        guesses: list[list[int]] = [[] for _ in seqs]
        x = self.model.logits(last[live])[:, : self.vocab].argmax(-1)
        for step in range(k):
            for j, i in enumerate(live):
                guesses[i].append(int(x[j]))
            if step == k - 1:
                break
            h = self._forward(live, x[:, None])
            for i in live:
                self.length[i] += 1
            x = self.model.logits(h[:, -1])[:, : self.vocab].argmax(-1)
        return [g[: max(r, 0)] for g, r in zip(guesses, room, strict=True)]

    def _forward(self, idx: list[int], x: torch.Tensor) -> torch.Tensor:
        """Tokens x (len(idx), T) into the draft cache rows idx at their own lengths; hidden states back."""
        assert self.cache is not None
        pos = [self.length[i] for i in idx]
        if idx == list(range(len(idx))):  # the usual case: the cache rows themselves
            return self.model.hidden(x, cache=self.cache.rows(0, len(idx)), positions=pos)
        t = torch.tensor(idx, device=self.device)
        sub = KVCache.of([k[t] for k in self.cache.k], [v[t] for v in self.cache.v])
        h = self.model.hidden(x, cache=sub, positions=pos)
        for dst, src in zip((*self.cache.k, *self.cache.v), (*sub.k, *sub.v), strict=True):
            dst[t] = src
        return h

    def accepted(self, row: int, length: int) -> None:
        """The engine row now holds `length` positions: draft keys past them were guesses it refused."""
        self.length[row] = min(self.length[row], length)

    def moved(self, dst: int, src: int) -> None:
        if src >= len(self.length):  # a row this drafter never saw
            return
        if self.cache is not None:
            n = self.length[src]
            for buf in (*self.cache.k, *self.cache.v):
                buf[dst, :, :n] = buf[src, :, :n]
            self.length[dst], self.origin[dst] = self.length[src], self.origin[src]
        self.length[src], self.origin[src] = 0, -1

    def reset(self, row: int) -> None:
        if row < len(self.length):
            self.length[row], self.origin[row] = 0, -1

    def forget(self, seq_id: int) -> None:
        pass

    def observe(self, inputs: torch.Tensor, logits: torch.Tensor) -> None:
        pass


def verify(
    guess: list[int], logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> list[int]:
    """The tokens a row keeps: the guesses the model agrees with, then one of its own.

    logits (len(guess) + 1, V): row j is the model's prediction after the pending token and guesses < j.
    Position by position the model's own token is chosen exactly as plain decoding chooses it (argmax, or a
    draw from the sequence's generator), and a guess is kept when it is that token; the first guess that is
    not ends the run, and the model's token takes its place.
    """
    if params.temperature == 0:
        best = logits.argmax(-1).tolist()
        pick = best.__getitem__
    else:

        def pick(j: int) -> int:
            return sample(logits[j : j + 1], params, [generator])[0]

    out = []
    for j in range(len(guess) + 1):
        t = pick(j)
        out.append(t)
        if j == len(guess) or t != guess[j]:
            return out
    return out


def make_drafter(draft: str, target: Transformer, tokens: int) -> Drafter | None:
    """The drafter `draft` names: "none", "ngram", or a draft model the loader takes (its path or name)."""
    if draft == "none":
        return None
    if tokens < 1:
        raise SlmError(f"speculative decoding needs at least 1 draft token (got {tokens})")
    if draft == "ngram":
        return NgramDrafter(target.vocab_size, tokens)
    loaded = load_model(draft)
    p = next(target.parameters())
    return ModelDrafter(loaded.model.to(device=p.device), target.vocab_size, tokens)
