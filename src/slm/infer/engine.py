"""The generation engine: many sequences decoded together with one KV cache, continuous batching.

    with Engine(model, tokenizer, stop_ids={eos}) as engine:
        done = engine.run(["Once upon a time", "def main("], SamplingParams(max_tokens=64, temperature=0))
    # or: engine.submit(prompt, params) ... for event in engine.stream(): ...   (per-sequence text as it comes)

Each sequence owns one row of the cache and decodes at its own position, so prompts of any lengths share a
batch without padding the cache. Every step first admits waiting sequences into free rows (their prompts
run together, right-padded, when that wastes little, and a prompt admitted several times runs once), then
decodes one token for every row; a sequence that finishes leaves at the end of the step and the last row
moves into its place, so rows 0..n-1 are always the live ones. Each sequence has its own sampling
parameters and seed, so its text does not depend on which others share its batch, and greedy decoding of a
batch gives what each prompt gives alone.

A sequence that reaches the model's context keeps going from the last half of its context (the cache of
its row is refilled), as `slm generate` always has.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from slm.config import SamplingParams
from slm.errors import SlmError
from slm.infer.sampling import check_finite, choose
from slm.infer.speculative import Drafter, verify
from slm.infer.text import IncrementalText
from slm.model.transformer import KVCache, Transformer, grow_cache

PAD_SLACK = 1.25  # prompts share a prefill batch when the longest is at most this many times the shortest
FULL_ROWS = 256  # positions from which a prefill batch runs at full speed (measured on a 2-core CPU)
# Speculative decoding runs while at most this many rows decode; with more, the engine decodes plainly.
# Measured on a 2-core AMD EPYC (benchmarks/speculative.py): 4 rows each guessing 5 tokens gave 0.60x plain
# decoding's tokens/s on chat and 1.03x on code; 1 row 1.16x on chat and 1.86x on code.
SPEC_ROWS = 2


@dataclass
class Event:
    """What one step did for one sequence: its new tokens and text; finish_reason once it ends."""

    id: int
    text: str
    tokens: list[int]
    finish_reason: str | None = None  # "stop" (end-of-text token or stop string), "length" or "cancelled"
    logprobs: list[float] | None = None  # of `tokens`, when the sequence asked for them
    top_logprobs: list[list[tuple[int, float]]] | None = None  # per token: the likeliest (id, log-probability)


@dataclass
class Completion:
    id: int
    prompt_tokens: int
    tokens: list[int]  # generated ids, the end-of-text token included when one ended the sequence
    text: str  # the generated text, cut before a stop string, without the end-of-text token
    finish_reason: str
    logprobs: list[float] | None  # log-probability of each generated token (SamplingParams.logprobs)
    time_to_first_token: float
    seconds: float
    top_logprobs: list[list[tuple[int, float]]] | None = None  # SamplingParams.top_logprobs per token


@dataclass
class SeqState:
    """One sequence in the engine: its prompt, parameters, what it generated, and where its row stands."""

    id: int
    prompt: list[int]
    params: SamplingParams
    text: IncrementalText
    generator: torch.Generator | None
    t_submit: float
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None
    pending: int | None = None  # the last token chosen, not yet in the cache
    length: int = 0  # cache positions this sequence's row holds
    origin: int = 0  # where the row's context starts in prompt + tokens (later than 0 after a refill)
    t_first: float | None = None
    t_done: float | None = None

    def completion(self) -> Completion:
        assert self.finish_reason is not None and self.t_done is not None
        first = self.t_first if self.t_first is not None else self.t_done  # cancelled before its first token
        return Completion(
            self.id,
            len(self.prompt),
            self.tokens,
            self.text.text,
            self.finish_reason,
            self.logprobs if self.params.logprobs else None,
            first - self.t_submit,
            self.t_done - self.t_submit,
            self.top if self.params.top_logprobs else None,
        )


class Engine:
    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        stop_ids: Iterable[int] = (),
        max_batch: int = 32,
        prefill_tokens: int = 2048,
        pack: bool | None = None,
        drafter: Drafter | None = None,
        spec_rows: int = SPEC_ROWS,
        fp16: bool = False,
    ):
        """stop_ids: tokens that end a sequence (end-of-text). prefill_tokens: positions, padding included,
        one prompt batch may hold. pack: keep decoding copies of the weights (default: on CPU, see
        Transformer.pack); close() drops them. drafter: guesses for speculative decoding
        (infer/speculative.py), checked while at most spec_rows rows decode; the engine closes it. fp16: a
        row decoding alone multiplies float16 copies of the weights (Transformer.pack(fp16=True))."""
        if max_batch < 1:
            raise SlmError(f"max_batch must be at least 1 (got {max_batch})")
        self.model, self.tok = model.eval(), tokenizer
        self.stop_ids = set(stop_ids)
        self.max_batch, self.prefill_tokens = max_batch, prefill_tokens
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.limit = model.cfg.max_seq_len
        self.packed = model.pack(fp16=fp16) if pack is not False else False
        self.cache: KVCache | None = None
        self.rows: list[SeqState] = []
        self.waiting: deque[SeqState] = deque()
        self.finished: dict[int, SeqState] = {}
        self.next_id = 0
        self.steps = 0
        self.drafter, self.spec_rows = drafter, spec_rows
        self.drafted = 0  # guesses checked, and those the model accepted (speculative decoding)
        self.accepted = 0

    def close(self) -> None:
        if self.packed:
            self.model.unpack()
            self.packed = False
        if self.drafter is not None:
            self.drafter.close()
        self.cache = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- requests

    def submit(self, prompt: str | list[int], params: SamplingParams | None = None, truncate: bool = False) -> int:
        """Queue a sequence; returns its id. A prompt longer than the context is refused, or with truncate
        keeps its last tokens."""
        params = params or SamplingParams()
        ids = self.tok.encode(prompt, add_special_tokens=False).ids if isinstance(prompt, str) else list(prompt)
        if not ids:  # an empty prompt starts a new document
            ids = [next(iter(sorted(self.stop_ids)), 0)]
        vocab = self.model.vocab_size
        if max(ids) >= vocab or min(ids) < 0:
            raise SlmError(f"prompt token id {max(ids)} is outside the model's vocabulary of {vocab}")
        if len(ids) >= self.limit:
            if not truncate:
                raise SlmError(
                    f"the prompt has {len(ids)} tokens; the model's context holds {self.limit} "
                    "(prompt and at least one new token): shorten it or ask for truncation"
                )
            ids = ids[-(self.limit - 1) :]
        gen = None
        if params.temperature > 0:
            gen = torch.Generator(device="cpu")
            if params.seed is not None:
                gen.manual_seed(params.seed)
            else:
                gen.seed()
        seq = SeqState(self.next_id, ids, params, IncrementalText(self.tok, ids, params.stop), gen, time.perf_counter())
        self.next_id += 1
        self.waiting.append(seq)
        return seq.id

    def cancel(self, seq_id: int) -> None:
        """Stop a sequence now (a client went away): its row is free after this step."""
        for s in list(self.waiting):
            if s.id == seq_id:
                self.waiting.remove(s)
        for s in self.rows:
            if s.id == seq_id and s.finish_reason is None:
                s.finish_reason, s.t_done = "cancelled", time.perf_counter()

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.rows)

    def run(self, prompts: list[str | list[int]], params: SamplingParams | list[SamplingParams]) -> list[Completion]:
        """Generate for every prompt (one SamplingParams for all, or one each); completions in prompt order."""
        each = params if isinstance(params, list) else [params] * len(prompts)
        if len(each) != len(prompts):
            raise SlmError(f"{len(prompts)} prompts but {len(each)} sampling parameter sets")
        ids = [self.submit(p, q) for p, q in zip(prompts, each, strict=True)]
        while self.has_work:
            self.step()
        return [self.finished.pop(i).completion() for i in ids]

    def stream(self) -> Iterator[Event]:
        """Step until every submitted sequence is done, yielding each step's events as they happen."""
        while self.has_work:
            yield from self.step()

    def result(self, seq_id: int) -> Completion:
        return self.finished.pop(seq_id).completion()

    # ---------------------------------------------------------------- one step

    @torch.no_grad()
    def step(self) -> list[Event]:
        events: list[Event] = []
        self._admit(events)
        for i, s in enumerate(self.rows):
            if s.finish_reason is None and s.length >= self.limit:
                self._prefill(i, [s], [self._context(s)], events)
        self._retire()
        if self.rows and not (self.drafter is not None and self._speculate(events)):
            self._decode(events)
        self._retire()
        self.steps += 1
        return events

    def _context(self, s: SeqState) -> list[int]:
        """What a row at the context limit continues from: the last half-window of prompt and generation."""
        return (s.prompt + s.tokens)[-(self.limit // 2) :]

    def _admit(self, events: list[Event]) -> None:
        room = self.max_batch - len(self.rows)
        take = [self.waiting.popleft() for _ in range(min(room, len(self.waiting)))]
        # Shortest first: prompts of similar length share a prefill batch with little padding, and rows end
        # up ordered by length, which keeps decoding's attention reads short (see Transformer.hidden).
        take.sort(key=lambda s: len(s.prompt))
        group: list[SeqState] = []
        distinct: set[tuple[int, ...]] = set()  # the group's different prompts: copies share a prefill row
        for s in take:
            n = len(s.prompt)
            padded = len(distinct | {tuple(s.prompt)}) * n
            # Short prompts batch up to FULL_ROWS positions whatever their padding (a lone 16-token prompt
            # runs at half the speed); longer ones only with prompts of similar length.
            if group and (
                padded > self.prefill_tokens or (n > PAD_SLACK * len(group[0].prompt) and padded > FULL_ROWS)
            ):
                self._prefill(len(self.rows), group, [g.prompt for g in group], events)
                group, distinct = [], set()
            group.append(s)
            distinct.add(tuple(s.prompt))
        if group:
            self._prefill(len(self.rows), group, [g.prompt for g in group], events)

    def _prefill(self, row: int, seqs: list[SeqState], contexts: list[list[int]], events: list[Event]) -> None:
        """Run contexts into rows row.. (new rows when row == len(self.rows)) and choose each next token.
        Right padding is harmless: causal attention keeps it out of every real position, and decoding
        overwrites it (each row's keys beyond its length are never read).

        Equal contexts run once: several samples of one prompt (a GRPO group, a request's `n`, synth's
        samples per prompt) compute its keys and values in one row, copied to the others afterwards."""
        new = row == len(self.rows)
        need = max(min(self.limit, len(c) + s.params.max_tokens) for s, c in zip(seqs, contexts, strict=True))
        self._ensure(row + len(seqs), need)
        assert self.cache is not None
        if new:
            self.rows.extend(seqs)
        first: dict[tuple[int, ...], int] = {}
        which = [first.setdefault(tuple(c), len(first)) for c in contexts]
        unique = [list(c) for c in first]
        width = max(len(c) for c in unique)
        x = torch.tensor([c + [c[-1]] * (width - len(c)) for c in unique], device=self.device)
        h = self.model.hidden(x, cache=self.cache.rows(row, row + len(unique)))
        last = torch.tensor([len(c) - 1 for c in unique], device=self.device)
        logits = self.model.logits(h[torch.arange(len(unique), device=self.device), last])
        if len(unique) < len(seqs):
            src = torch.tensor(which, device=self.device) + row
            for buf in (*self.cache.k, *self.cache.v):
                buf[row : row + len(seqs), :, :width] = buf[src, :, :width]  # indexing reads a copy first
            logits = logits[src - row]
        for i, (s, c) in enumerate(zip(seqs, contexts, strict=True)):
            s.length, s.origin = len(c), len(s.prompt) + len(s.tokens) - len(c)
            if self.drafter is not None:
                self.drafter.reset(row + i)
        self._choose(seqs, logits, events, "prefill")

    def _decode(self, events: list[Event]) -> None:
        assert self.cache is not None
        n = len(self.rows)
        x = torch.tensor([[s.pending] for s in self.rows], device=self.device)
        h = self.model.hidden(x, cache=self.cache.rows(0, n), positions=[s.length for s in self.rows])
        logits = self.model.logits(h[:, 0])
        for s in self.rows:
            s.length += 1
        if self.drafter is not None:
            self.drafter.observe(x[:, 0], logits)
            for i, s in enumerate(self.rows):
                self.drafter.accepted(i, s.length)
        self._choose(self.rows, logits, events, f"decode step {self.steps}")

    def _speculate(self, events: list[Event]) -> bool:
        """One step checking each row's guesses (False, doing nothing, when there are none): every row's
        pending token and guesses run together, right-padded to the longest guess."""
        assert self.drafter is not None
        # Checking guesses multiplies the rows a forward computes: nearly free while decoding is bound by
        # reading the weights (one or two rows), a loss once the arithmetic counts.
        if len(self.rows) > self.spec_rows:
            return False
        # A row may not guess past its context or its max_tokens (the model's own token comes after).
        room = [min(self.limit - 1 - s.length, s.params.max_tokens - len(s.tokens) - 1) for s in self.rows]
        guesses = self.drafter.propose(self.rows, room)
        k = min(max(len(g) for g in guesses), min(self.limit - 1 - s.length for s in self.rows))
        if k <= 0:
            return False
        guesses = [g[:k] for g in guesses]
        n = len(self.rows)
        self._ensure(n, max(s.length for s in self.rows) + k + 1)
        assert self.cache is not None
        x = torch.tensor(
            [
                [s.pending, *g] + [g[-1] if g else s.pending] * (k - len(g))
                for s, g in zip(self.rows, guesses, strict=True)
            ],
            device=self.device,
        )
        h = self.model.hidden(x, cache=self.cache.rows(0, n), positions=[s.length for s in self.rows])
        logits = self.model.logits(h)
        check_finite(logits.flatten(0, 1), f"decode step {self.steps}")
        real = torch.tensor([[j <= len(g) for j in range(k + 1)] for g in guesses], device=self.device)
        self.drafter.observe(x[real], logits[real])
        now = time.perf_counter()
        for i, (s, g) in enumerate(zip(self.rows, guesses, strict=True)):
            kept = verify(g, logits[i, : len(g) + 1], s.params, s.generator)
            self.drafted += len(g)
            self.accepted += len(kept) - 1
            s.length += len(kept)
            self.drafter.accepted(i, s.length)
            self._append(s, kept, logits[i, : len(kept)], events, now)
        return True

    def _choose(self, seqs: list[SeqState], logits: torch.Tensor, events: list[Event], where: str) -> None:
        check_finite(logits, where)
        picks = choose(logits, [s.params for s in seqs], [s.generator for s in seqs])
        now = time.perf_counter()
        for i, (s, t) in enumerate(zip(seqs, picks, strict=True)):
            self._append(s, [t], logits[i : i + 1], events, now)

    def _append(self, s: SeqState, tokens: list[int], logits: torch.Tensor, events: list[Event], now: float) -> None:
        """Add chosen tokens to a sequence (logits: the (len(tokens), V) rows they were chosen from), up to
        the first that ends it; one event for all of them."""
        lps: list[float] | None = None
        tops: list[list[tuple[int, float]]] | None = None
        if s.params.logprobs or s.params.top_logprobs:
            logp = torch.log_softmax(logits.float(), -1)
            lps = logp.gather(1, torch.tensor(tokens, device=logits.device)[:, None])[:, 0].tolist()
            if s.params.top_logprobs:
                v, ix = logp.topk(s.params.top_logprobs, dim=-1)
                tops = [list(zip(a, b, strict=True)) for a, b in zip(ix.tolist(), v.tolist(), strict=True)]
        if s.t_first is None:
            s.t_first = now
        taken = 0
        for t in tokens:
            taken += 1
            s.tokens.append(t)
            if t in self.stop_ids:
                s.finish_reason = "stop"
            else:
                s.text.add(t)
                if s.text.stopped_by is not None:
                    s.finish_reason = "stop"
                elif len(s.tokens) >= s.params.max_tokens:
                    s.finish_reason = "length"
            s.pending = t
            if s.finish_reason is not None:
                if s.text.stopped_by is None:
                    s.text.add(None)  # anything held back as half a character
                s.t_done = now
                break
        lp = lps[:taken] if lps is not None else None
        top = tops[:taken] if tops is not None else None
        if lp is not None:
            s.logprobs.extend(lp)
        if top is not None:
            s.top.extend(top)
        events.append(
            Event(s.id, s.text.take(final=s.finish_reason is not None), tokens[:taken], s.finish_reason, lp, top)
        )

    def _retire(self) -> None:
        """Finished rows leave; the last live row moves into each hole, so rows stay 0..n-1."""
        for i in range(len(self.rows) - 1, -1, -1):
            s = self.rows[i]
            if s.finish_reason is None:
                continue
            last = len(self.rows) - 1
            if i != last and self.cache is not None:
                n = self.rows[last].length
                for buf in (*self.cache.k, *self.cache.v):
                    buf[i, :, :n] = buf[last, :, :n]
                self.rows[i] = self.rows[last]
                if self.drafter is not None:
                    self.drafter.moved(i, last)
            self.rows.pop()
            self.finished[s.id] = s
            if self.drafter is not None:
                self.drafter.forget(s.id)

    def _ensure(self, rows: int, length: int) -> None:
        """A cache with at least `rows` rows and `length` positions, keeping what the live rows hold."""
        keep = (len(self.rows), max((s.length for s in self.rows), default=0))
        self.cache = grow_cache(
            self.cache, self.model.cfg, rows, length, self.dtype, self.device, self.limit, self.max_batch, keep
        )
