"""Speculative decoding: greedy text is exactly plain greedy text for both kinds of draft (n-grams and a draft
model), with continuous batching, rows moving, the context limit and stop strings; sampling keeps the model's
distribution; guesses are actually made and accepted."""

from __future__ import annotations

import pytest
import torch

from slm.config import ModelConfig, SamplingParams
from slm.errors import SlmError
from slm.infer.engine import Engine
from slm.infer.sampling import filtered_probs
from slm.infer.speculative import ModelDrafter, NgramDrafter, NgramIndex, make_drafter, verify
from slm.model.transformer import Transformer
from slm.tokenizer import train_tokenizer

V = 300
GREEDY = SamplingParams(max_tokens=40, temperature=0)


def tiny(seed: int, max_seq_len: int = 64, layers: int = 2) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(
        ModelConfig(n_layer=layers, n_head=4, n_kv_head=2, d_model=32, max_seq_len=max_seq_len, tie_embeddings=False),
        V,
    )
    with torch.no_grad():
        m.lm_head.weight.mul_(50)  # sharp enough that greedy decoding is not a string of ties
    return m.eval()


@pytest.fixture(scope="module")
def model() -> Transformer:
    return tiny(0)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["the quick brown fox jumps over the lazy dog " * 50], vocab_size=V)


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for n in (1, 3, 17, 9, 23, 5):
        base = torch.randint(1, V, (max(1, n // 3),), generator=g).tolist()
        out.append((base * 4)[:n])  # repeats, so prompt lookup has something to find
    return out


def run(model, tok, drafter, params=GREEDY, max_batch=3, ps=None, spec_rows=8):
    with Engine(model, tok, max_batch=max_batch, drafter=drafter, spec_rows=spec_rows) as eng:
        done = eng.run(ps or prompts(), params)
        return done, eng.drafted, eng.accepted


def test_ngram_index_finds_the_latest_earlier_occurrence():
    ix = NgramIndex()
    ix.extend([5, 6, 7, 8, 5, 6, 9, 5, 6])
    assert ix.propose(2) == [9, 5]  # "5 6" last ended before 9; the final "5 6" itself is not a match
    ix.extend([7])
    assert ix.propose(3) == [8, 5, 6]  # "5 6 7" occurred once, followed by 8 5 6
    empty = NgramIndex()
    empty.extend([1, 2, 3])
    assert empty.propose(4) == []


@pytest.mark.parametrize("kind", ["ngram", "self", "other"])
def test_greedy_with_guesses_is_plain_greedy(model, tok, kind):
    plain, _, _ = run(model, tok, None)
    # n-grams; the model itself as draft model (every guess right); another one (most guesses wrong)
    drafter = NgramDrafter(V, 4) if kind == "ngram" else ModelDrafter(tiny(0 if kind == "self" else 7), V, 4)
    got, drafted, accepted = run(model, tok, drafter)
    assert [c.tokens for c in got] == [c.tokens for c in plain]
    assert [c.text for c in got] == [c.text for c in plain]
    assert [c.finish_reason for c in got] == [c.finish_reason for c in plain]
    assert drafted > 0 and accepted > 0
    if kind == "self":
        assert accepted == drafted
    if kind == "other":
        assert accepted < drafted


def test_guesses_past_the_context_limit_and_through_refills(tok):
    m = tiny(3, max_seq_len=32)
    long = SamplingParams(max_tokens=90, temperature=0)
    ps = [[4, 5, 6] * 3, [9, 8] * 10]
    plain, _, _ = run(m, tok, None, long, ps=ps)
    for drafter in (NgramDrafter(V, 6), ModelDrafter(tiny(3, max_seq_len=32), V, 6)):
        got, drafted, _ = run(m, tok, drafter, long, ps=ps)
        assert [c.tokens for c in got] == [c.tokens for c in plain]
        assert all(len(c.tokens) == 90 for c in got) and drafted > 0


def test_a_draft_model_with_a_shorter_context_than_the_prompt(model, tok, monkeypatch):
    """The draft sees at most 16 positions, the prompts are longer: it cannot guess, and its cache must not
    grow (it used to be reallocated with doubled rows at every step, until memory ran out)."""
    from slm.infer import speculative

    rows: list[int] = []
    real = speculative.grow_cache

    def watched(*a, **k):
        cache = real(*a, **k)
        rows.append(cache.k[0].size(0))
        return cache

    monkeypatch.setattr(speculative, "grow_cache", watched)
    draft = ModelDrafter(tiny(5, max_seq_len=16), V, 4)
    ps = [[4, 5, 6] * 8, [9, 8] * 12]
    plain, _, _ = run(model, tok, None, SamplingParams(max_tokens=20, temperature=0), ps=ps)
    got, _, _ = run(model, tok, draft, SamplingParams(max_tokens=20, temperature=0), ps=ps)
    assert [c.tokens for c in got] == [c.tokens for c in plain]
    assert rows and max(rows) <= 4, rows


def test_accepted_runs_stop_at_max_tokens_stop_strings_and_keep_logprobs(model, tok):
    params = SamplingParams(max_tokens=13, temperature=0, logprobs=True, top_logprobs=2)
    plain, _, _ = run(model, tok, None, params)
    got, _, accepted = run(model, tok, ModelDrafter(tiny(0), V, 5), params)
    assert accepted > 0
    for a, b in zip(plain, got, strict=True):
        assert b.tokens == a.tokens and len(b.tokens) <= 13
        assert b.logprobs is not None and a.logprobs is not None and len(b.logprobs) == len(b.tokens)
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
        assert b.top_logprobs is not None and [[t for t, _ in x] for x in b.top_logprobs] == [
            [t for t, _ in x] for x in a.top_logprobs or []
        ]
    # A stop string inside an accepted run ends the text there, as it does without guesses.
    text = plain[2].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    if stop.strip():
        p = SamplingParams(max_tokens=40, temperature=0, stop=[stop])
        a = run(model, tok, None, p)[0][2]
        b = run(model, tok, ModelDrafter(tiny(0), V, 5), p)[0][2]
        assert b.text == a.text and b.finish_reason == a.finish_reason == "stop" and stop not in b.text


@pytest.mark.parametrize("guess", [0, 2, 3])
def test_sampling_keeps_the_models_distribution(guess):
    """The first token kept after a guess is distributed as the model's filtered distribution, whether the
    guess is its likeliest token (0), a less likely one (2) or one top-k removed (3)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0], [0.0] * 5])
    params = SamplingParams(temperature=0.9, top_k=4)
    p = filtered_probs(logits[0], params)
    g = torch.Generator().manual_seed(0)
    n = 20000
    counts = torch.zeros(5)
    for _ in range(n):
        counts[verify([guess], logits, params, g)[0]] += 1
    assert counts[3] == 0  # top-k removed it, and a guess never brings it back
    assert torch.allclose(counts / n, p, atol=0.015)


def test_sampled_text_with_guesses_is_the_seeds_text_without_them(model, tok):
    """Sampling: the same seed gives the same text with guesses or without, alone or in a batch."""
    params = SamplingParams(max_tokens=30, temperature=0.8, top_p=0.9, seed=5)
    plain = [c.tokens for c in run(model, tok, None, params)[0]]
    a, _, accepted = run(model, tok, NgramDrafter(V, 4), params)
    b = run(model, tok, ModelDrafter(tiny(0), V, 4), params, max_batch=1)[0]
    assert [c.tokens for c in a] == plain == [c.tokens for c in b]
    assert accepted > 0
    other = SamplingParams(max_tokens=30, temperature=0.8, top_p=0.9, seed=6)
    assert [c.tokens for c in run(model, tok, None, other)[0]] != plain


def test_guessing_stops_while_many_rows_decode(model, tok):
    """Past spec_rows rows the engine decodes plainly; guessing resumes as rows finish (same text)."""
    plain = [c.tokens for c in run(model, tok, None)[0]]
    ps = prompts()
    params = [SamplingParams(max_tokens=8 + 6 * i, temperature=0) for i in range(len(ps))]
    with Engine(model, tok, max_batch=6, drafter=NgramDrafter(V, 4), spec_rows=1) as eng:
        ids = [eng.submit(p, q) for p, q in zip(ps, params, strict=True)]
        guessed_with = []
        while eng.has_work:
            before, rows = eng.drafted, len(eng.rows)
            eng.step()
            if eng.drafted > before:
                guessed_with.append(rows)
        got = [eng.result(i).tokens for i in ids]
    assert guessed_with and max(guessed_with) == 1
    assert all(g == p[: len(g)] for g, p in zip(got, plain, strict=True))


def test_draft_names_are_checked(model):
    assert make_drafter("none", model, 5) is None
    assert isinstance(make_drafter("ngram", model, 5), NgramDrafter)
    with pytest.raises(SlmError, match=r"not found|cannot|no model"):
        make_drafter("/nonexistent/draft", model, 5)
    with pytest.raises(SlmError, match="tokenizer"):
        ModelDrafter(Transformer(ModelConfig(n_layer=1, n_head=2, d_model=16, max_seq_len=32), 5000), V, 4)
