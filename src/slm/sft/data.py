"""Rendered conversations as training batches.

Each conversation is rendered once (ids and loss mask) when the run starts. Micro-batches take whole
conversations in a seeded order that is reshuffled each epoch: sample g of the run is
permutation(epoch)[g mod N], with g counted from the step, so any step's batch is the same on every process
and after any resume, with no data state to checkpoint. A micro-batch is padded to its longest
conversation (right padding needs no attention mask: no real token attends to a later position), and
padding is never a target.

Conversations vary in length (CPython docstring questions: 30 to 400 tokens), and random batches of 8
are half padding. With grouping (the default), every GROUP micro-batches' conversations are sorted by
length, cut into micro-batches, and those are served in a seeded random order: the same conversations
in the same epochs, with a fraction of the padding. With packing, rows of seq_len positions hold several
whole conversations each, attention kept inside each one (PackedBatcher): next to no padding at all.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import torch

from slm.data.batch import IGNORE, Batch
from slm.errors import SlmError
from slm.infer.template import ChatFormat, Message, Rendered


@dataclass
class RenderReport:
    kept: int = 0
    dropped_overlong: int = 0
    truncated: int = 0
    no_target: int = 0  # nothing left to learn after truncation
    tokens: int = 0
    target_tokens: int = 0
    longest: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "notes"}


def held_out(messages: list[Message], fraction: float) -> bool:
    """The same conversation is held out or not whatever the file order: by a hash of its content."""
    digest = hashlib.blake2b(json.dumps(messages, sort_keys=True).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def render_all(
    fmt: ChatFormat, convs: list[list[Message]], seq_len: int, loss_on: str, overlong: str, report: RenderReport
) -> list[Rendered]:
    """Rendered conversations of at most seq_len + 1 tokens (inputs and targets of seq_len positions)."""
    out = []
    limit = seq_len + 1
    for c in convs:
        r = fmt.render(c, loss_on)
        report.longest = max(report.longest, len(r))
        if len(r) > limit:
            if overlong == "drop":
                report.dropped_overlong += 1
                continue
            r = Rendered(r.ids[:limit], r.mask[:limit])
            report.truncated += 1
        if not any(r.mask[1:]):
            report.no_target += 1
            continue
        report.kept += 1
        report.tokens += len(r)
        report.target_tokens += sum(r.mask[1:])
        out.append(r)
    return out


GROUP = 64  # micro-batches whose conversations are sorted by length together


class ConversationBatcher:
    def __init__(
        self, convs: list[Rendered], batch_size: int, per_step: int, seed: int, pad_id: int, group: bool = True
    ):
        if not convs:
            raise SlmError("no training conversations left to batch (see the counts above)")
        self.convs = convs
        self.batch_size = batch_size
        self.per_step = per_step  # conversations per optimiser step, over every micro-batch and process
        self.seed = seed
        self.pad_id = pad_id
        self.group = group
        self.lengths = np.array([len(c) for c in convs])
        self._perms: dict[int, np.ndarray] = {}
        self._chunk: tuple[int, list[list[int]]] | None = None

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.convs))}
        return self._perms[epoch]

    def _samples(self, first: int, count: int) -> list[int]:
        n = len(self.convs)
        return [int(self._perm(g // n)[g % n]) for g in range(first, first + count)]

    def indices(self, step: int, index: int) -> list[int]:
        first = step * self.per_step + index * self.batch_size
        if not self.group:
            return self._samples(first, self.batch_size)
        micro = first // self.batch_size
        chunk, at = divmod(micro, GROUP)
        if self._chunk is None or self._chunk[0] != chunk:
            ids = self._samples(chunk * GROUP * self.batch_size, GROUP * self.batch_size)
            ids.sort(key=lambda i: (self.lengths[i], i))
            batches = [ids[k : k + self.batch_size] for k in range(0, len(ids), self.batch_size)]
            order = np.random.default_rng([self.seed, 1, chunk]).permutation(len(batches))
            self._chunk = (chunk, [batches[k] for k in order])
        return self._chunk[1][at]

    def batch(self, step: int, index: int) -> Batch:
        return collate([self.convs[i] for i in self.indices(step, index)], self.pad_id)


def collate(convs: list[Rendered], pad_id: int) -> Batch:
    width = max(len(c) for c in convs) - 1
    inputs = torch.full((len(convs), width), pad_id, dtype=torch.long)
    targets = torch.full((len(convs), width), IGNORE, dtype=torch.long)
    for r, c in enumerate(convs):
        n = len(c) - 1
        ids = torch.as_tensor(c.ids, dtype=torch.long)
        inputs[r, :n] = ids[:-1]
        keep = torch.as_tensor(c.mask[1:], dtype=torch.bool)
        targets[r, :n] = torch.where(keep, ids[1:], IGNORE)
    return Batch(inputs, targets, real_tokens=sum(len(c) - 1 for c in convs))


CHUNK = 512  # conversations packed together: best-fit over a chunk leaves rows nearly full


def pack(sizes: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indices into `sizes`, grouped into bins of at most `capacity` (every size fits)."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    free: list[tuple[int, int]] = []  # (room left, bin number), sorted
    bins: list[list[int]] = []
    for i in order:
        at = bisect.bisect_left(free, (sizes[i], -1))
        if at == len(free):
            bins.append([i])
            room, b = capacity - sizes[i], len(bins) - 1
        else:
            room, b = free.pop(at)
            bins[b].append(i)
            room -= sizes[i]
        bisect.insort(free, (room, b))
    return bins


class PackedBatcher:
    """Rows of up to seq_len positions, each holding whole conversations side by side; attention stays inside
    each conversation (Batch.segments) and positions restart at each, so a packed conversation trains exactly
    as it would alone, with almost no padding.

    Epoch e's rows: its seeded permutation cut in chunks, each chunk packed best-fit, the rows of the
    epoch in a seeded order. Row r of the run is a function of r alone, so any step's batch is the same on
    every process and after any resume.
    """

    def __init__(self, convs: list[Rendered], seq_len: int, batch_size: int, per_step: int, seed: int, pad_id: int):
        if not convs:
            raise SlmError("no training conversations left to batch (see the counts above)")
        self.convs, self.seq_len, self.batch_size = convs, seq_len, batch_size
        self.per_step, self.seed, self.pad_id = per_step, seed, pad_id  # per_step: rows per optimiser step
        self.sizes = [len(c) - 1 for c in convs]  # positions a conversation takes: inputs ids[:-1]
        self._epochs: list[list[list[int]]] = []
        self._starts = [0]  # first row of each epoch

    def _epoch(self, e: int) -> list[list[int]]:
        while len(self._epochs) <= e:
            k = len(self._epochs)
            perm = np.random.default_rng([self.seed, k]).permutation(len(self.convs))
            rows: list[list[int]] = []
            for a in range(0, len(perm), CHUNK):
                chunk = [int(i) for i in perm[a : a + CHUNK]]
                rows += [[chunk[j] for j in b] for b in pack([self.sizes[i] for i in chunk], self.seq_len)]
            order = np.random.default_rng([self.seed, 2, k]).permutation(len(rows))
            self._epochs.append([rows[j] for j in order])
            self._starts.append(self._starts[-1] + len(rows))
            if len(self._epochs) > 2:  # only the current epochs' rows are needed, not their history
                self._epochs[-3] = []
        return self._epochs[e]

    def row(self, r: int) -> list[int]:
        e = 0
        while True:
            self._epoch(e)
            if r < self._starts[e + 1]:
                return self._epoch(e)[r - self._starts[e]]
            e += 1

    def indices(self, step: int, index: int) -> list[list[int]]:
        first = step * self.per_step + index * self.batch_size
        return [self.row(r) for r in range(first, first + self.batch_size)]

    def batch(self, step: int, index: int) -> Batch:
        return collate_packed([[self.convs[i] for i in row] for row in self.indices(step, index)], self.pad_id)


def collate_packed(rows: list[list[Rendered]], pad_id: int) -> Batch:
    """Each row's conversations side by side, segment k for the k-th; padding is a segment of its own."""
    width = max(sum(len(c) - 1 for c in row) for row in rows)
    inputs = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for k, c in enumerate(row):
            n = len(c) - 1
            ids = torch.as_tensor(c.ids, dtype=torch.long)
            inputs[r, at : at + n] = ids[:-1]
            keep = torch.as_tensor(c.mask[1:], dtype=torch.bool)
            targets[r, at : at + n] = torch.where(keep, ids[1:], IGNORE)
            segments[r, at : at + n] = k
            at += n
    real = sum(len(c) - 1 for row in rows for c in row)
    return Batch(inputs, targets, real_tokens=real, segments=segments)


@dataclass
class Conversations:
    """Training and held-out conversations of a run, rendered; what the loop's `shards` is for SFT."""

    train: list[Rendered]
    val: list[Rendered]
    per_step: int
    pad_id: int
    batching: str = "grouped"  # sft.batching: padded, grouped or packed

    def batcher(self, seq_len: int, batch_size: int, seed: int) -> ConversationBatcher | PackedBatcher:
        if self.batching == "packed":
            return PackedBatcher(self.train, seq_len, batch_size, self.per_step, seed, self.pad_id)
        return ConversationBatcher(self.train, batch_size, self.per_step, seed, self.pad_id, self.batching == "grouped")
