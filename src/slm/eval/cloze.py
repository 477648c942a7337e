"""A multiple-choice task made from a corpus's held-out text: which line (or word) comes next?

Each item is a context (the lines before a point in a held-out document) and four candidate next lines: the
true one and three lines of similar length from elsewhere in the same domain's held-out text. Lines longer
than an item allows (paragraphs of prose) are cut into sentences, which then play the part of lines. A model that
has learnt a domain's structure (verse and speakers, verse numbers, definitions, reST, Python) picks the
true line more often than the 25% of chance, so the task separates models far too small for MMLU or
BIG-bench. The word variant is easier still: the next word among three words drawn from the same
domain's held-out text, so a model that ignores the context scores chance.

Items are text, not tokens: any model `slm eval` loads can take it, whatever its tokenizer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from slm.data.mixture import corpus_domains
from slm.data.shards import Shards
from slm.errors import SlmError
from slm.run import atomic_write_text, refuse_existing
from slm.tokenizer import load_tokenizer

SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def held_out_texts(corpus: Path, domain: str) -> list[str]:
    """The held-out documents of one domain, as text."""
    tok = load_tokenizer(corpus / "tokenizer.json")
    shards = Shards.open(corpus / domain)
    ids = np.asarray(shards.tokens("val"))
    cuts = np.nonzero(ids == shards.manifest["eos_id"])[0].tolist()
    texts, start = [], 0
    for end in [*cuts, len(ids)]:
        texts.append(tok.decode(ids[start:end].tolist(), skip_special_tokens=True))
        start = end + 1
    return [t for t in texts if t.strip()]


def held_out_lines(corpus: Path, domain: str, max_chars: int = 160) -> list[list[tuple[str, str]]]:
    """The held-out documents of one domain, each as (separator before, text) units: non-blank lines, and
    the sentences of lines longer than max_chars."""
    docs = []
    for text in held_out_texts(corpus, domain):
        units: list[tuple[str, str]] = []
        for line in (ln.strip() for ln in text.split("\n")):
            if not line:
                continue
            parts = SENTENCE_END.split(line) if len(line) > max_chars else [line]
            units += [("\n" if i == 0 else " ", part) for i, part in enumerate(parts)]
        if units:
            docs.append(units)
    return docs


def _item(context: str, sep: str, answer: str, others: list[str], rng: np.random.Generator) -> dict:
    """One task row: the answer shuffled among the distractors, every choice behind the same separator."""
    choices = [answer, *others]
    order = rng.permutation(len(choices))
    return {
        "context": context,
        "choices": [sep + choices[o] for o in order],
        "answer": int(np.nonzero(order == 0)[0][0]),
    }


WORD = re.compile(r"(?<![\w'])[^\W\d_]{3,}(?![\w'])")


def make_word_items(
    texts: list[str], n: int, rng: np.random.Generator, context_chars: int = 400, n_choices: int = 4
) -> list[dict]:
    """Up to n items: a context and the word that follows it, among n_choices - 1 other words drawn from the
    same domain's held-out word occurrences. Answer and distractors come from one distribution, so word
    frequency alone scores chance; only reading the context beats it."""
    spots = [(d, m.start(), m.group()) for d, t in enumerate(texts) for m in WORD.finditer(t) if m.start() >= 100]
    words = [w for _, _, w in spots]
    items: list[dict] = []
    for k in rng.permutation(len(spots)):
        if len(items) == n:
            break
        d, at, answer = spots[k]
        text = texts[d]
        sep_start = at
        while sep_start > 0 and text[sep_start - 1] in " \t":
            sep_start -= 1
        sep = text[sep_start:at]  # the spaces before the word travel with every choice
        others: list[str] = []
        for _ in range(50):
            w = words[rng.integers(len(words))]
            if w != answer and w not in others:
                others.append(w)
                if len(others) == n_choices - 1:
                    break
        if len(others) < n_choices - 1:
            continue
        start = max(0, sep_start - context_chars)
        if start > 0:  # begin at a word, not inside one
            start = next((i + 1 for i in range(start, sep_start) if text[i].isspace()), start)
        items.append(_item(text[start:sep_start], sep, answer, others, rng))
    return items


def make_items(
    docs: list[list[tuple[str, str]]],
    n: int,
    rng: np.random.Generator,
    context_chars: int = 400,
    min_chars: int = 16,
    max_chars: int = 160,
    n_choices: int = 4,
) -> list[dict]:
    """Up to n items: (context, true next unit, n_choices - 1 units of similar length from other places).
    Every choice carries the true unit's separator, so the joint alone gives nothing away."""
    pool = [(d, i) for d, units in enumerate(docs) for i in range(1, len(units))]
    lengths = np.array([len(docs[d][i][1]) for d, i in pool])
    points = [k for k, (d, i) in enumerate(pool) if min_chars <= lengths[k] <= max_chars]
    rng.shuffle(points)
    items: list[dict] = []
    for k in points:
        if len(items) == n:
            break
        d, i = pool[k]
        sep, answer = docs[d][i]
        near = np.nonzero((lengths >= 0.67 * len(answer)) & (lengths <= 1.5 * len(answer)))[0]
        others = sorted({docs[e][j][1] for e, j in (pool[m] for m in near)} - {answer})
        if len(others) < n_choices - 1:
            continue
        first, used = i - 1, len(docs[d][i - 1][1])  # at least the unit just before, then back to the budget
        while first > 0 and used + 1 + len(docs[d][first - 1][1]) <= context_chars:
            first -= 1
            used += 1 + len(docs[d][first][1])
        context = docs[d][first][1] + "".join(s + t for s, t in docs[d][first + 1 : i])
        items.append(_item(context, sep, answer, rng.choice(others, size=n_choices - 1, replace=False).tolist(), rng))
    return items


def make_cloze_task(
    corpus: Path, out: Path, per_domain: int = 100, seed: int = 0, unit: str = "line", force: bool = False
) -> dict:
    """Write OUT.jsonl and OUT.yaml (a task file `slm eval --tasks OUT.yaml` reads); returns items per domain."""
    if out.suffix not in (".yaml", ".yml"):
        raise SlmError(f"--out {out} should be the task file to write, ending in .yaml")
    if unit not in ("line", "word"):
        raise SlmError(f"--unit {unit} is not known; choose line or word")
    data = out.with_suffix(".jsonl")
    for path in (out, data):
        refuse_existing(path, force)
    rng = np.random.default_rng(seed)
    rows, counts = [], {}
    for domain in corpus_domains(corpus):
        if unit == "line":
            items = make_items(held_out_lines(corpus, domain), per_domain, rng)
        else:
            items = make_word_items(held_out_texts(corpus, domain), per_domain, rng)
        counts[domain] = len(items)
        rows += [{"domain": domain, **it} for it in items]
    if not rows:
        raise SlmError(f"{corpus} has no held-out text to make items from; re-make the corpus with a val split")
    write_cloze_task(rows, out, f"next-{unit} items from the held-out text of {corpus} (slm data cloze, seed {seed})")
    return counts


def write_cloze_task(rows: list[dict], out: Path, source: str) -> None:
    """OUT.jsonl (the items) and OUT.yaml (the task file naming it), each written atomically."""
    data = out.with_suffix(".jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(data, "".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "name": out.stem,
        "type": "multiple_choice",
        "data": data.name,
        "prompt": "{context}",
        "choices": "choices",
        "choice_prefix": "",
        "answer": "answer",
        "source": source,
        "license": "that of the held-out text",
    }
    atomic_write_text(out, "".join(f"{k}: {json.dumps(v)}\n" for k, v in spec.items()))
