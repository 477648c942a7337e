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
