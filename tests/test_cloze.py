"""The next-line task made from a corpus's held-out text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slm.errors import SlmError
from slm.eval.cloze import held_out_lines, make_cloze_task, make_items
from slm.eval.tasks import load_task

from .test_mix import corpus  # noqa: F401 - the module-scoped corpus fixture


def test_items_hold_the_true_next_line_among_similar_lines():
    rng = np.random.default_rng(0)
    docs = [[("\n", f"line {d}-{i} " + "x" * (20 + (i * 7) % 30)) for i in range(40)] for d in range(5)]
    items = make_items(docs, 50, rng, context_chars=100)
    assert len(items) == 50
    where = {"\n" + t: (d, i) for d, units in enumerate(docs) for i, (_, t) in enumerate(units)}
    for it in items:
        assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4
        assert all(c.startswith("\n") for c in it["choices"])  # the true joint on every choice
        d, i = where[it["choices"][it["answer"]]]
        context = it["context"].split("\n")
        assert context == [t for _, t in docs[d][i - len(context) : i]]  # the units just before, in order
        first = i - len(context)
        assert len(it["context"]) <= 100 or len(context) == 1  # the budget, unless one unit alone exceeds it
        assert first == 0 or len(it["context"]) + 1 + len(docs[d][first - 1][1]) > 100  # and as long as it allows
        n = len(docs[d][i][1])
        assert all(0.67 * n <= len(c) - 1 <= 1.5 * n for c in it["choices"])
    assert len({it["answer"] for it in items}) == 4  # the right choice is not always in one place


def test_long_lines_are_cut_into_sentences():
    from slm.eval.cloze import SENTENCE_END

    assert SENTENCE_END.split("One. Two? Three; four") == ["One.", "Two?", "Three;", "four"]


def test_cloze_task_from_a_corpus_loads_as_a_task(corpus, tmp_path):  # noqa: F811
    counts = make_cloze_task(corpus, tmp_path / "next.yaml", per_domain=5, seed=1)
    assert set(counts) == {"news", "books"} and all(0 < n <= 5 for n in counts.values())
    task = load_task(str(tmp_path / "next.yaml"))
    assert len(task.items) == sum(counts.values())
    units = {s + t for d in ("news", "books") for doc in held_out_lines(corpus, d) for s, t in doc}
    for item, row in zip(task.items, (tmp_path / "next.jsonl").read_text().splitlines(), strict=True):
        assert item.prompt == json.loads(row)["context"] and set(item.choices) <= units
    with pytest.raises(SlmError, match=r"ending in \.yaml"):
        make_cloze_task(corpus, tmp_path / "next.jsonl")
    with pytest.raises(SlmError, match=r"next\.yaml exists; pass --force"):
        make_cloze_task(corpus, tmp_path / "next.yaml")
    (tmp_path / "other.jsonl").write_text("keep me\n")  # the data file of the task is not overwritten either
    with pytest.raises(SlmError, match=r"other\.jsonl exists; pass --force"):
        make_cloze_task(corpus, tmp_path / "other.yaml")
    assert (tmp_path / "other.jsonl").read_text() == "keep me\n"
    assert make_cloze_task(corpus, tmp_path / "next.yaml", per_domain=5, seed=1, force=True) == counts


def test_word_items_ask_for_the_word_that_follows_the_context():
    from slm.eval.cloze import make_word_items

    rng = np.random.default_rng(0)
    texts = [" ".join(f"word{chr(97 + (i * 7 + d) % 26)}x" for i in range(200)) for d in range(3)]
    texts = [t.replace("0", "") for t in texts]
    items = make_word_items(texts, 40, rng, context_chars=60)
    assert len(items) == 40
    for it in items:
        assert len(set(it["choices"])) == 4 and all(c.startswith(" ") for c in it["choices"])
        answer = it["choices"][it["answer"]]
        assert any(it["context"] + answer in t for t in texts)  # the context, then the answer, as written
        assert len(it["context"]) <= 60 and not it["context"].startswith(" ")
    with pytest.raises(SlmError, match="--unit"):
        make_cloze_task(Path("."), Path("x.yaml"), unit="paragraph")
