"""Perplexity-based selection: document spans, strategies keep the right fraction, an end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slm.config import load_config
from slm.data.shards import Shards
from slm.errors import SlmError
from slm.run import Run
from slm.select.perplexity import documents, keep_mask, select
from slm.train.loop import train

from .test_mix import corpus, tiny  # noqa: F401 - the module-scoped corpus fixture


def test_document_spans_split_on_eos():
    toks = np.array([5, 6, 0, 7, 0, 8, 9])
    assert documents(toks, 0) == [(0, 3), (3, 5), (5, 7)]
    assert documents(np.array([1, 0]), 0) == [(0, 2)]


@pytest.mark.parametrize("strategy", ["low", "medium", "high", "random"])
def test_strategies_keep_the_fraction_from_the_right_part(strategy):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=1000)
    sizes = rng.integers(50, 150, size=1000)
    m = keep_mask(scores, sizes, 0.3, strategy, seed=1)
    kept = sizes[m].sum() / sizes.sum()
    assert 0.3 <= kept < 0.3 + 150 / sizes.sum()  # the budget, overshot by at most one document
    q = np.quantile(scores, [0.3, 0.35, 0.65, 0.7])
    if strategy == "low":
        assert scores[m].max() <= q[0] + 0.05
    elif strategy == "high":
        assert scores[m].min() >= q[3] - 0.05
    elif strategy == "medium":
        assert scores[m].min() >= q[1] - 0.05 and scores[m].max() <= q[2] + 0.05
    else:
        assert scores[m].min() < q[0] and scores[m].max() > q[3]
    with pytest.raises(SlmError, match="unknown strategy"):
        keep_mask(scores, sizes, 0.3, "middle", 0)


def test_select_end_to_end(corpus, tmp_path):  # noqa: F811
    ref = Run(tmp_path / "ref")
    train(load_config(None, tiny(corpus, tmp_path, "data.mixture={news = 0.5, books = 0.5}")), ref, progress=False)
    m = select(corpus, str(ref.path), tmp_path / "low", 0.5, "low")
    rows = [json.loads(x) for x in (tmp_path / "low" / "scores.jsonl").read_text().splitlines()]
    kept = [r["nll"] for r in rows if r["kept"]]
    dropped = [r["nll"] for r in rows if not r["kept"]]
    assert max(kept) <= min(dropped)
    assert sum(r["tokens"] for r in rows if r["kept"]) == sum(v["kept_tokens"] for v in m["domains"].values())
    for d in ("news", "books"):
        s = Shards.open(tmp_path / "low" / d)
        assert len(s.tokens("train")) == m["domains"][d]["kept_tokens"]
        assert np.array_equal(s.tokens("val"), Shards.open(corpus / d).tokens("val"))
    assert "<svg" in (tmp_path / "low" / "report.html").read_text()
    with pytest.raises(SlmError, match="exists"):
        select(corpus, str(ref.path), tmp_path / "low", 0.5, "low")


def test_units_cut_documents_into_pieces():
    from slm.select.perplexity import units

    spans = [(0, 10), (10, 13)]
    assert units(spans, 0) == spans
    assert units(spans, 4) == [(0, 4), (4, 8), (8, 10), (10, 13)]


def test_select_by_pieces_ends_every_kept_piece_with_a_separator(corpus, tmp_path):  # noqa: F811
    ref = Run(tmp_path / "ref")
    train(load_config(None, tiny(corpus, tmp_path, "data.mixture={news = 0.5, books = 0.5}")), ref, progress=False)
    m = select(corpus, str(ref.path), tmp_path / "pieces", 0.4, "high", unit_tokens=16)
    rows = [json.loads(x) for x in (tmp_path / "pieces" / "scores.jsonl").read_text().splitlines()]
    assert (
        max(r["tokens"] for r in rows) == 16 and len(rows) > 2 * sum(v["documents"] for v in m["domains"].values()) / 3
    )
    eos = Shards.open(corpus / "news").manifest["eos_id"]
    for d in ("news", "books"):
        src = np.asarray(Shards.open(corpus / d).tokens("train"))
        out = np.asarray(Shards.open(tmp_path / "pieces" / d).tokens("train"))
        kept = [r for r in rows if r["domain"] == d and r["kept"]]
        # each kept piece, in order, plus a separator where the piece stopped inside a document
        expect = [np.append(src[r["start"] : r["end"]], [] if src[r["end"] - 1] == eos else [eos]) for r in kept]
        assert np.array_equal(out, np.concatenate(expect).astype(out.dtype))
    with pytest.raises(SlmError, match="unit-tokens"):
        select(corpus, str(ref.path), tmp_path / "neg", 0.4, "high", unit_tokens=-1)


def test_a_reference_tokenizer_that_cannot_spell_the_corpus_is_refused(corpus, tmp_path, monkeypatch):  # noqa: F811
    from tokenizers import Tokenizer, models, pre_tokenizers

    import slm.select.perplexity as sel

    ref = Run(tmp_path / "ref")
    train(load_config(None, tiny(corpus, tmp_path, "data.mixture={news = 0.5, books = 0.5}")), ref, progress=False)
    real = sel.load_model
    words = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()

    def with_word_tokenizer(source):
        loaded = real(source)
        loaded.tokenizer = words
        return loaded

    monkeypatch.setattr(sel, "load_model", with_word_tokenizer)
    with pytest.raises(SlmError, match="tokenizer cannot encode the corpus"):
        select(corpus, str(ref.path), tmp_path / "sel", 0.5, "low")
    assert not (tmp_path / "sel").exists()


def test_batched_scores_equal_one_by_one(corpus, tmp_path):  # noqa: F811
    from slm.model.load import load_model
    from slm.model.score import score

    ref = Run(tmp_path / "ref")
    train(load_config(None, tiny(corpus, tmp_path, "data.mixture={news = 0.5, books = 0.5}")), ref, progress=False)
    loaded = load_model(ref.path)
    model = loaded.model
    model.eval()
    toks = np.asarray(Shards.open(corpus / "news").tokens("train"))
    units = [toks[i : i + 20] for i in range(0, 400, 20)] + [toks[:90], toks[5:6], toks[7:40]]  # 33: one window
    got = score(model, units, 32, batch_size=4)
    for u, g in zip(units, got, strict=True):
        alone = score(model, [u], 32, batch_size=1)[0]
        assert g[1] == alone[1] == len(u) - 1
        assert g[0] == pytest.approx(alone[0], rel=1e-4, abs=1e-6)
