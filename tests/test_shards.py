from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slm.data.shards import Batcher, Shards, prepare_shards
from slm.errors import SlmError
from slm.tokenizer import train_tokenizer


@pytest.fixture
def tok(corpus: Path):
    return train_tokenizer([p.read_text() for p in corpus.glob("*.txt")], vocab_size=300)


def test_prepare_with_explicit_val(tok, corpus: Path, tmp_path: Path):
    out = tmp_path / "shards"
    m = prepare_shards(tok, [str(corpus)], out, [str(corpus.parent / "heldout.txt")])
    assert m["dtype"] == "uint16"
    assert m["splits"]["train"]["documents"] == 3 and m["splits"]["val"]["documents"] == 1
    sh = Shards.open(out)
    train, val = sh.tokens("train"), sh.tokens("val")
    assert isinstance(train, np.memmap)
    assert len(train) == m["splits"]["train"]["tokens"]
    eos = m["eos_id"]
    assert int((np.asarray(train) == eos).sum()) == 3  # one separator after each document
    held = (corpus.parent / "heldout.txt").read_text()
    assert tok.decode(np.asarray(val[:-1]).tolist()) == held
    assert (out / "tokenizer.json").exists()
    sh.check_tokenizer(tok)


def test_hash_split_is_deterministic_and_stable(tok, tmp_path: Path):
    docs = tmp_path / "many"
    docs.mkdir()
    for i in range(60):
        (docs / f"d{i:02d}.txt").write_text(f"document number {i} " * 20)
    a = prepare_shards(tok, [str(docs)], tmp_path / "a", val_fraction=0.2)
    b = prepare_shards(tok, [str(docs / "*.txt")], tmp_path / "b", val_fraction=0.2)
    assert a["splits"] == b["splits"]
    assert 0 < a["splits"]["val"]["documents"] < 60
    assert a["splits"]["train"]["documents"] + a["splits"]["val"]["documents"] == 60


def test_single_document_falls_back_to_tail_split(tok, tmp_path: Path):
    f = tmp_path / "one.txt"
    f.write_text("to be or not to be " * 200)
    m = prepare_shards(tok, [str(f)], tmp_path / "s", val_fraction=0.1)
    tr, va = m["splits"]["train"]["tokens"], m["splits"]["val"]["tokens"]
    assert tr > 0 and va > 0 and abs(va / (tr + va) - 0.1) < 0.01


def test_bad_files_are_counted_not_hidden(tok, corpus: Path, tmp_path: Path):
    (corpus / "blob.bin").write_bytes(b"\x00\x01\x02binary" * 100)
    (corpus / "empty.txt").write_text("   \n\t ")
    (corpus / "latin1.txt").write_bytes("caf\xe9 au lait, ".encode("latin-1") * 20)
    m = prepare_shards(tok, [str(corpus), str(corpus / "hamlet.txt")], tmp_path / "s", val_fraction=0.5)
    read = m["read"]
    assert [Path(p).name for p in read["skipped_binary"]] == ["blob.bin"]
    assert [Path(p).name for p in read["skipped_empty"]] == ["empty.txt"]
    assert [Path(p).name for p in read["invalid_utf8_replaced"]] == ["latin1.txt"]
    assert [Path(p).name for p in read["duplicate_paths"]] == ["hamlet.txt"]
    assert read["documents"] == 4
    assert len(m["notes"]) == 4


def test_empty_corpus_and_missing_input_fail_clearly(tok, tmp_path: Path):
    (tmp_path / "e.txt").write_text("  \n")
    with pytest.raises(SlmError, match="no text found"):
        prepare_shards(tok, [str(tmp_path / "e.txt")], tmp_path / "s")
    assert not (tmp_path / "s").exists()  # nothing half-written left behind
    with pytest.raises(SlmError, match="matches no file"):
        prepare_shards(tok, [str(tmp_path / "nope*.txt")], tmp_path / "s")


def test_batches_are_contiguous_windows_and_deterministic(tok, corpus: Path, tmp_path: Path):
    prepare_shards(tok, [str(corpus)], tmp_path / "s", [str(corpus.parent / "heldout.txt")])
    tokens = Shards.open(tmp_path / "s").tokens("train")
    b = Batcher(tokens, 16, 4, seed=7)
    first = b.batch(3, 0)
    x, y = first.inputs, first.targets
    assert x.shape == (4, 16) and y.shape == (4, 16)
    assert (x[:, 1:] == y[:, :-1]).all()
    x2 = Batcher(tokens, 16, 4, seed=7).batch(3, 0).inputs
    assert (x == x2).all()
    x3 = b.batch(3, 1).inputs
    assert not (x == x3).all()
    arr = np.asarray(tokens)
    row = x[0].numpy()
    starts = [i for i in range(len(arr) - 16) if (arr[i : i + 16] == row).all()]
    assert starts, "a batch row must be a slice of the shard"


def test_short_corpus_and_tokenizer_mismatch(tok, corpus: Path, tmp_path: Path):
    prepare_shards(tok, [str(corpus)], tmp_path / "s", [str(corpus.parent / "heldout.txt")])
    sh = Shards.open(tmp_path / "s")
    with pytest.raises(SlmError, match="fewer than one window"):
        Batcher(sh.tokens("val"), 100_000, 1, 0, split="val")
    other = train_tokenizer(["entirely different text"] * 5, vocab_size=280)
    with pytest.raises(SlmError, match="was made with tokenizer"):
        sh.check_tokenizer(other)


def test_truncated_shard_and_bad_manifest(tok, corpus: Path, tmp_path: Path):
    out = tmp_path / "s"
    prepare_shards(tok, [str(corpus)], out, [str(corpus.parent / "heldout.txt")])
    data = (out / "train.bin").read_bytes()
    (out / "train.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(SlmError, match="missing or truncated"):
        Shards.open(out).tokens("train")
    (out / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(SlmError, match="format"):
        Shards.open(out)
    with pytest.raises(SlmError, match=r"no manifest\.json"):
        Shards.open(tmp_path)
