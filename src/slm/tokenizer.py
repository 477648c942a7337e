"""Train and load tokenizers. The format is HF `tokenizer.json`, so any tokenizer from the hub works too."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from slm.errors import SlmError

CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")  # the turn marks of ChatML, the chat layout most models use


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    min_frequency: int = 2,
    eos_token: str = "<|endoftext|>",
    chat_tokens: bool = False,
) -> Tokenizer:
    """Byte-level BPE: every byte is in the base alphabet, so any UTF-8 text round-trips exactly. With
    chat_tokens, ChatML's turn marks are special tokens too (for instruction tuning with sft.template='chatml')."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[eos_token, *(CHATML_TOKENS if chat_tokens else ())],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.encode_special_tokens = True
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise SlmError(f"tokenizer {p} not found; train one with `slm tokenizer train` or point to a tokenizer.json")
    try:
        tok = Tokenizer.from_file(str(p))
        # A literal "<|endoftext|>" inside a document is text, not a control token: shards add EOS by id,
        # and byte counts (bits-per-byte) stay exact whatever the text contains.
        tok.encode_special_tokens = True
        return tok
    except Exception as e:  # the Rust side raises plain Exception with its parse message
        raise SlmError(f"{p}: not a valid HF tokenizer.json ({str(e).splitlines()[0]})") from None


def tokenizer_hash(tok: Tokenizer) -> str:
    """Identifies a tokenizer by its content, so shards and checkpoints can be matched to it."""
    canonical = json.dumps(json.loads(tok.to_str()), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def eos_id(tok: Tokenizer, eos_token: str = "<|endoftext|>") -> int:
    for name in (eos_token, "<|endoftext|>", "</s>", "<|im_end|>", "<eos>"):
        i = tok.token_to_id(name)
        if i is not None:
            return i
    raise SlmError(f"tokenizer has no end-of-text token '{eos_token}'; set tokenizer.eos_token to one it has")


def end_ids(tok: Tokenizer, eos_token: str = "<|endoftext|>") -> set[int]:
    """Tokens that end a generated sequence: the model's end-of-text token, plus the document separator and
    chat turn end when the vocabulary has them (a chat model's eos is <|im_end|>, yet <|endoftext|> ends too)."""
    ids = {eos_id(tok, eos_token)}
    for name in ("<|endoftext|>", "<|im_end|>"):
        i = tok.token_to_id(name)
        if i is not None:
            ids.add(i)
    return ids


@cache
def _byte_decoder() -> dict[str, int]:
    # GPT-2's reversible map from bytes to printable characters, which byte-level BPE vocabularies use.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def _pieces(tok: Tokenizer) -> Iterator[tuple[int, str, str]]:
    """Each token id, its piece, and how the piece spells text: "special" (no text), "bytes" (a byte-level
    piece, one character per byte), "fallback" (<0xE3>, one byte) or "text" (its own UTF-8, ▁ a space)."""
    spec = json.loads(tok.to_str())
    byte_level = "ByteLevel" in json.dumps(spec.get("decoder")) or "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
    special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    dec = _byte_decoder()
    for piece, i in tok.get_vocab(with_added_tokens=True).items():
        if i in special:
            yield i, piece, "special"
        elif byte_level and all(ch in dec for ch in piece):
            yield i, piece, "bytes"
        elif _BYTE_FALLBACK.match(piece):
            yield i, piece, "fallback"
        else:
            yield i, piece, "text"


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """Bytes of text each token id stands for (0 for special tokens): the denominator of bits-per-byte."""
    out = np.zeros(max(tok.get_vocab(with_added_tokens=True).values()) + 1, dtype=np.int32)
    for i, piece, kind in _pieces(tok):
        if kind == "bytes":
            out[i] = len(piece)
        elif kind == "fallback":
            out[i] = 1
        elif kind == "text":
            out[i] = len(piece.replace("▁", " ").encode("utf-8"))
    return out


def byte_tokens(tok: Tokenizer) -> np.ndarray:
    """True for each token id that stands for bytes rather than whole characters: a byte-fallback token
    (<0xE3>) or a byte-level piece that is part of a character's UTF-8 bytes. A text written mostly in
    such tokens is one the tokenizer barely knows (each character costs several tokens)."""
    dec = _byte_decoder()
    out = np.zeros(max(tok.get_vocab(with_added_tokens=True).values()) + 1, dtype=bool)
    for i, piece, kind in _pieces(tok):
        if kind == "fallback":
            out[i] = True
        elif kind == "bytes":
            try:
                bytes(dec[ch] for ch in piece).decode("utf-8")
            except UnicodeDecodeError:
                out[i] = True
    return out
