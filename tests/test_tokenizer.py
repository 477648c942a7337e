from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from slm.errors import SlmError
from slm.tokenizer import load_tokenizer, token_byte_lengths, tokenizer_hash, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
TOK = train_tokenizer([(REPO / "data/shakespeare/sonnets.txt").read_text()[:30000]], vocab_size=400)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_any_unicode(text: str):
    ids = TOK.encode(text, add_special_tokens=False).ids
    assert TOK.decode(ids) == text


@settings(max_examples=100, deadline=None)
@given(st.text())
@example("<|endoftext|>")  # a literal special token in text is text: it must not become EOS (0 bytes)
@example("a<|endoftext|>b")
def test_byte_lengths_sum_to_utf8_length(text: str):
    lengths = token_byte_lengths(TOK)
    ids = TOK.encode(text, add_special_tokens=False).ids
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))


def test_round_trip_edge_cases():
    for text in ["", " ", "\n\n\t", "naïve café — 東京 🎭\u200b", "\x00\x01\x7f", "  leading and trailing  "]:
        assert TOK.decode(TOK.encode(text).ids) == text


def test_special_token_has_no_bytes_and_hash_survives_save(tmp_path: Path):
    eos = TOK.token_to_id("<|endoftext|>")
    assert token_byte_lengths(TOK)[eos] == 0
    TOK.save(str(tmp_path / "tokenizer.json"))
    again = load_tokenizer(tmp_path)
    assert tokenizer_hash(again) == tokenizer_hash(TOK)
    other = train_tokenizer(["something else entirely"] * 10, vocab_size=300)
    assert tokenizer_hash(other) != tokenizer_hash(TOK)


def test_metaspace_style_vocab_lengths():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "▁the": 1, "<0xE2>": 2, "é": 3}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    lengths = token_byte_lengths(tok)
    assert list(lengths) == [5, 4, 1, 2]


def test_compare_counts_words_bytes_and_byte_tokens_on_a_known_text(tmp_path: Path):
    from slm.eval.tokenizers import compare_tokenizers

    tok = train_tokenizer(["the cat sat on the mat. " * 50], 300, 1, "<|endoftext|>")
    path = tmp_path / "tok.json"
    path.write_text(tok.to_str())
    (tmp_path / "en.txt").write_text("the cat sat on the mat.")
    (tmp_path / "fr.txt").write_text("été")  # é was never seen: each is two byte tokens, t one whole character
    rows = {
        Path(r["text"]).name: r
        for r in compare_tokenizers([str(path)], [str(tmp_path / "en.txt"), str(tmp_path / "fr.txt")])
    }
    en, fr = rows["en.txt"], rows["fr.txt"]
    assert (en["words"], en["bytes"]) == (6, 23)
    assert en["tokens"] == len(tok.encode("the cat sat on the mat.").ids) and en["tokens"] <= 8  # merged words
    assert en["tokens_per_word"] == en["tokens"] / 6 and en["bytes_per_token"] == 23 / en["tokens"]
    assert en["byte_token_share"] == 0.0
    assert (fr["words"], fr["bytes"], fr["tokens"]) == (1, 5, 5)
    assert fr["byte_token_share"] == pytest.approx(4 / 5)
    with pytest.raises(SlmError, match="is not a tokenizer"):
        compare_tokenizers([str(tmp_path / "en.txt")], [str(tmp_path / "en.txt")])
    with pytest.raises(SlmError, match=r"not a valid HF tokenizer\.json"):
        (tmp_path / "bad.json").write_text("{}")
        compare_tokenizers([str(tmp_path / "bad.json")], [str(tmp_path / "en.txt")])
