"""`slm tokenizer compare`: how well each tokenizer fits each text, the numbers behind "a tokenizer trained
for the language beats a general one" (Regional Tiny Stories): fewer tokens per word, more bytes per
token, fewer tokens spent on pieces of characters."""

from __future__ import annotations

import numpy as np

from slm.data.text import ReadStats, expand_inputs, read_documents
from slm.errors import SlmError
from slm.model.load import load_tokenizer_of
from slm.tokenizer import byte_tokens


def text_stats(tok, docs: list[str], partial: np.ndarray) -> dict[str, float]:
    n = words = size = byte_toks = 0
    for doc in docs:
        ids = np.array(tok.encode(doc, add_special_tokens=False).ids, dtype=np.int64)
        n += len(ids)
        words += len(doc.split())
        size += len(doc.encode("utf-8"))
        byte_toks += int(partial[ids[ids < len(partial)]].sum())
    return {
        "tokens": n,
        "words": words,
        "bytes": size,
        "tokens_per_word": n / words if words else float("nan"),
        "bytes_per_token": size / n if n else float("nan"),
        "byte_token_share": byte_toks / n if n else 0.0,
    }


def compare_tokenizers(sources: list[str], texts: list[str]) -> list[dict]:
    """One row per (tokenizer, text): tokens per whitespace-separated word (fertility), UTF-8 bytes per
    token, and the share of tokens that stand for bytes rather than whole characters. Each text is a
    file, a folder or a glob (as data.inputs), measured as a whole."""
    if not sources or not texts:
        raise SlmError("name at least one tokenizer and one --text file")
    docs: dict[str, list[str]] = {}
    for pattern in texts:
        stats = ReadStats()
        docs[pattern] = list(read_documents(expand_inputs([pattern], stats), stats))
        if not docs[pattern]:
            raise SlmError(f"--text {pattern}: no text found (every file was empty or binary)")
    rows = []
    for source in sources:
        tok = load_tokenizer_of(source)
        partial = byte_tokens(tok)
        for name, found in docs.items():
            row = text_stats(tok, found, partial)
            rows.append({"tokenizer": str(source), "vocab": tok.get_vocab_size(), "text": name, **row})
    return rows
