from __future__ import annotations

from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

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
