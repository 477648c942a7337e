"""Token shards: flat arrays of token ids on disk, read through memory maps.

    SHARDS/
      manifest.json   format, dtype, tokenizer hash, per-split token/document/byte counts, inputs
      train.bin       uint16 when the vocabulary fits, else uint32; documents joined by the EOS token
      val.bin

Batches are drawn at random offsets from the memory map, so a corpus never has to fit in memory, and the
offsets depend only on (seed, step, micro-batch index): a resumed or multi-process run sees the very same
batches as one uninterrupted process.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from slm.data.batch import Batch, windows
from slm.data.text import ReadStats, read_documents, split_inputs
from slm.errors import SlmError
from slm.run import atomic_dir, atomic_write_text
from slm.tokenizer import eos_id, tokenizer_hash

FORMAT = "slm-shards/1"
ENCODE_BATCH = 32


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _doc_in_val(ids: list[int], fraction: float) -> bool:
    """A stable content hash decides, so the split never changes when files are reordered or added."""
    digest = hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


class _SplitWriter:
    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = path, dtype
        self.f = path.open("wb")
        self.tokens = self.documents = self.bytes = 0

    def add(self, ids: list[int], nbytes: int) -> None:
        np.asarray(ids, dtype=self.dtype).tofile(self.f)
        self.tokens += len(ids)
        self.documents += 1
        self.bytes += nbytes

    def close(self) -> dict:
        self.f.close()
        return {
            "file": self.path.name,
            "tokens": self.tokens,
            "documents": self.documents,
            "bytes": self.bytes,
        }


def _encode(tok: Tokenizer, docs: Iterable[str], eos: int) -> Iterator[tuple[list[int], int]]:
    batch: list[str] = []

    def flush() -> Iterator[tuple[list[int], int]]:
        for text, enc in zip(batch, tok.encode_batch(batch, add_special_tokens=False), strict=True):
            yield [*enc.ids, eos], len(text.encode("utf-8"))
        batch.clear()

    for d in docs:
        batch.append(d)
        if len(batch) == ENCODE_BATCH:
            yield from flush()
    yield from flush()


def prepare_shards(
    tok: Tokenizer,
    inputs: list[str],
    out: Path,
    val_inputs: list[str] | None = None,
    val_fraction: float = 0.1,
    eos_token: str = "<|endoftext|>",
) -> dict:
    """Tokenize text files into train/val shards. Returns the manifest (also written to out/manifest.json)."""
    stats = ReadStats()
    train_files, val_files = split_inputs(inputs, val_inputs, stats)
    manifest = write_shards(
        tok,
        read_documents(train_files, stats),
        out,
        read_documents(val_files, stats) if val_files else None,
        val_fraction,
        eos_token,
        extra=lambda: {
            "inputs": [str(p) for p in train_files],
            "val_inputs": [str(p) for p in val_files],
            "read": stats.as_dict(),
        },
        empty_hint=f"no text found in inputs {inputs}: every file was empty or binary; point data.inputs at text files",
    )
    manifest["notes"] = stats.notes()
    return manifest


def write_shards(
    tok: Tokenizer,
    train_docs: Iterable[str],
    out: Path,
    val_docs: Iterable[str] | None = None,
    val_fraction: float = 0.1,
    eos_token: str = "<|endoftext|>",
    extra: Callable[[], dict] | None = None,
    empty_hint: str = "no documents to write",
) -> dict:
    """Tokenize a stream of documents into a shard folder, atomically. `extra()` adds manifest fields
    that are only known once the streams are consumed."""
    vocab = tok.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab)
    eos = eos_id(tok, eos_token)
    with atomic_dir(out) as tmp:
        train_w, val_w = _SplitWriter(tmp / "train.bin", dtype), _SplitWriter(tmp / "val.bin", dtype)
        for ids, nbytes in _encode(tok, train_docs, eos):
            # With explicit held-out documents every training document trains; otherwise a content hash decides.
            to_val = val_docs is None and _doc_in_val(ids, val_fraction)
            (val_w if to_val else train_w).add(ids, nbytes)
        for ids, nbytes in _encode(tok, val_docs or (), eos):
            val_w.add(ids, nbytes)
        splits = {"train": train_w.close(), "val": val_w.close()}
        if splits["train"]["tokens"] + splits["val"]["tokens"] == 0:
            raise SlmError(empty_hint)
        if not splits["train"]["tokens"] or not splits["val"]["tokens"]:
            # Too few documents for a document-level split: hold out the tail of the token stream instead.
            splits = _split_tail(tmp, dtype, val_fraction)
        manifest = {
            "format": FORMAT,
            "dtype": dtype.name,
            "tokenizer_hash": tokenizer_hash(tok),
            "vocab_size": vocab,
            "eos_id": eos,
            "splits": splits,
            "split_rule": "val_inputs" if val_docs is not None else f"document hash < {val_fraction}",
            **(extra() if extra else {}),
        }
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        tok.save(str(tmp / "tokenizer.json"))
    return manifest


def _split_tail(folder: Path, dtype: np.dtype, fraction: float) -> dict:
    parts = [np.fromfile(folder / f, dtype=dtype) for f in ("train.bin", "val.bin")]
    allt = np.concatenate(parts)
    cut = max(1, min(len(allt) - 1, math.floor(len(allt) * (1 - fraction))))
    allt[:cut].tofile(folder / "train.bin")
    allt[cut:].tofile(folder / "val.bin")
    # Byte counts follow the token split only approximately; bits-per-byte uses per-token byte lengths.
    return {
        "train": {"file": "train.bin", "tokens": int(cut), "documents": 1, "bytes": None},
        "val": {"file": "val.bin", "tokens": int(len(allt) - cut), "documents": 1, "bytes": None},
    }


# ---------------------------------------------------------------- reading


@dataclass
class Shards:
    folder: Path
    manifest: dict

    @classmethod
    def open(cls, folder: str | Path) -> Shards:
        folder = Path(folder)
        mf = folder / "manifest.json"
        if not mf.is_file():
            raise SlmError(f"{folder} has no manifest.json; make shards with `slm prepare`")
        try:
            manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise SlmError(f"{mf}: not valid JSON ({e}); rebuild the shards with `slm prepare`") from None
        if manifest.get("format") != FORMAT:
            raise SlmError(f"{mf}: format {manifest.get('format')!r} is not {FORMAT!r}; rebuild with `slm prepare`")
        return cls(folder, manifest)

    def tokens(self, split: str) -> np.ndarray:
        info = self.manifest["splits"].get(split)
        if info is None:
            raise SlmError(f"{self.folder}: no '{split}' split in manifest.json")
        path = self.folder / info["file"]
        dtype = np.dtype(self.manifest["dtype"])
        if not path.exists() or path.stat().st_size != info["tokens"] * dtype.itemsize:
            raise SlmError(f"{path} is missing or truncated (expected {info['tokens']} tokens); rebuild the shards")
        if info["tokens"] == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r")

    @property
    def domains(self) -> dict[str, Shards]:
        """One shard folder has no domains of its own (a corpus of several is MixtureShards)."""
        return {}

    def batcher(self, seq_len: int, batch_size: int, seed: int) -> Batcher:
        return Batcher(self.tokens("train"), seq_len, batch_size, seed)

    def check_tokenizer(self, tok: Tokenizer) -> None:
        have, want = self.manifest["tokenizer_hash"], tokenizer_hash(tok)
        if have != want:
            raise SlmError(
                f"{self.folder} was made with tokenizer {have}, but the model uses {want}; "
                "re-run `slm prepare` with the model's tokenizer"
            )


class Batcher:
    """Random windows of seq_len+1 tokens; the windows for a step depend only on (seed, step, index)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, split: str = "train"):
        if len(tokens) < seq_len + 1:
            raise SlmError(
                f"the {split} split has {len(tokens)} tokens, fewer than one window of seq_len+1={seq_len + 1}; "
                "add text or lower train.seq_len"
            )
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed

    def batch(self, step: int, index: int) -> Batch:
        rng = np.random.default_rng([self.seed, step, index])
        return self.at(rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size))

    def at(self, starts: np.ndarray) -> Batch:
        """Inputs and next-token targets of the windows beginning at `starts`."""
        win = np.stack([self.tokens[s : s + self.seq_len + 1] for s in starts]).astype(np.int64)
        return windows(torch.from_numpy(win))
