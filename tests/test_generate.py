"""The generation engine: batched decoding equals one-at-a-time decoding, per-sequence parameters, stop strings,
continuous batching (sequences joining and leaving mid-decode), seeds, streaming, and refused input."""

from __future__ import annotations

import pytest
import torch

from slm.config import ModelConfig, SamplingParams
from slm.errors import SlmError
from slm.infer.engine import Engine
from slm.infer.sampling import choose, filtered_probs, sampling_params
from slm.model.transformer import Transformer
from slm.tokenizer import train_tokenizer

GREEDY = SamplingParams(max_tokens=40, temperature=0)


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    m = Transformer(
        ModelConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=64, tie_embeddings=False), 300
    )
    # Sharpen the output layer so greedy decoding is not a string of ties.
    with torch.no_grad():
        m.lm_head.weight.mul_(50)
    return m.eval()


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["the quick brown fox jumps over the lazy dog " * 50], vocab_size=300)


def reference_greedy(model: Transformer, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding the slow, obvious way: a full forward over everything so far, every token."""
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids[-model.cfg.max_seq_len :]]))
            t = int(logits[0, -1].argmax())
            out.append(t)
            ids.append(t)
    return out


def test_batched_greedy_equals_one_at_a_time_for_mixed_lengths(model, tok):
    torch.manual_seed(1)
    prompts = [torch.randint(1, 300, (n,)).tolist() for n in (1, 3, 17, 9, 23, 5)]
    with Engine(model, tok, max_batch=8) as eng:
        together = [c.tokens for c in eng.run(prompts, GREEDY)]
    for p, got in zip(prompts, together, strict=True):
        with Engine(model, tok, max_batch=1) as alone:
            assert alone.run([p], GREEDY)[0].tokens == got
        assert got == reference_greedy(model, p, 40)
    assert len({tuple(t) for t in together}) > 1


def test_sequences_join_and_leave_mid_decode(model, tok):
    """With fewer rows than prompts, and prompts submitted while others decode, every sequence still gets what
    it gets alone; short ones leave early and waiting ones take their rows."""
    torch.manual_seed(2)
    prompts = [torch.randint(1, 300, (n,)).tolist() for n in (4, 12, 7, 20, 2)]
    lengths = [5, 30, 12, 8, 25]
    params = [SamplingParams(max_tokens=n, temperature=0) for n in lengths]
    with Engine(model, tok, max_batch=2) as eng:
        ids = [eng.submit(p, q) for p, q in zip(prompts[:3], params[:3], strict=True)]
        for _ in range(6):
            eng.step()
        ids += [eng.submit(p, q) for p, q in zip(prompts[3:], params[3:], strict=True)]
        seen_rows = set()
        while eng.has_work:
            eng.step()
            seen_rows.add(len(eng.rows))
        done = [eng.result(i) for i in ids]
    assert max(seen_rows) <= 2
    for p, n, c in zip(prompts, lengths, done, strict=True):
        assert c.tokens == reference_greedy(model, p, n) and c.finish_reason == "length"


def test_generation_continues_past_the_context_limit(model, tok):
    with Engine(model, tok) as eng:
        c = eng.run([[1, 2, 3]], SamplingParams(max_tokens=150, temperature=0))[0]
    assert len(c.tokens) == 150 and c.finish_reason == "length"


def test_stop_strings_per_sequence_and_streaming(model, tok):
    with Engine(model, tok) as eng:
        full = eng.run(["the"], GREEDY)[0].text
    assert len(full) > 6
    stop = full[3:6]
    with Engine(model, tok) as eng:
        a = eng.submit("the", SamplingParams(max_tokens=40, temperature=0, stop=[stop]))
        b = eng.submit("the", GREEDY)
        pieces: dict[int, list[str]] = {a: [], b: []}
        for event in eng.stream():
            pieces[event.id].append(event.text)
        cut, whole = eng.result(a), eng.result(b)
    assert cut.text == full[: full.find(stop)] and stop not in cut.text and cut.finish_reason == "stop"
    assert whole.text == full
    assert "".join(pieces[a]) == cut.text and "".join(pieces[b]) == whole.text


def test_end_of_text_token_ends_a_sequence(model, tok):
    with Engine(model, tok) as eng:
        first = eng.run([[5, 6]], GREEDY)[0].tokens
    with Engine(model, tok, stop_ids={first[3]}) as eng:
        c = eng.run([[5, 6]], GREEDY)[0]
    assert c.tokens == first[: first.index(first[3]) + 1] and c.finish_reason == "stop"


def test_seeds_are_reproducible_whatever_shares_the_batch(model, tok):
    p = SamplingParams(max_tokens=30, temperature=1.0, top_k=50, seed=5)
    with Engine(model, tok) as eng:
        alone = eng.run([[3, 4]], p)[0].tokens
    with Engine(model, tok) as eng:
        crowd = eng.run([[9], [3, 4], [7, 7, 7]], [SamplingParams(temperature=1.0, seed=1), p, GREEDY])
    assert crowd[1].tokens == alone
    with Engine(model, tok) as eng:
        other = eng.run([[3, 4]], SamplingParams(max_tokens=30, temperature=1.0, top_k=50, seed=6))[0].tokens
    assert other != alone


def test_samples_of_one_prompt_share_its_prefill(model, tok, monkeypatch):
    """A GRPO group: eight seeded samples of each of two prompts. Each prompt runs through the model once (one
    prefill of two rows, not sixteen), and every sample is what its seed gives the prompt alone."""
    prompts = [[3, 4, 5], [9, 8, 7, 6, 5, 4]]
    params = [SamplingParams(max_tokens=12, temperature=1.0, seed=s) for s in range(8)]
    prefills: list[int] = []
    real = Transformer.hidden

    def counted(self, idx, *a, **k):
        if idx.size(1) > 1:
            prefills.append(idx.size(0))
        return real(self, idx, *a, **k)

    monkeypatch.setattr(Transformer, "hidden", counted)
    with Engine(model, tok, max_batch=16) as eng:
        together = eng.run([p for p in prompts for _ in params], params * 2)
    assert prefills == [2]
    for n, c in enumerate(together):
        with Engine(model, tok) as alone:
            assert alone.run([prompts[n // 8]], params[n % 8])[0].tokens == c.tokens
    assert len({tuple(c.tokens) for c in together[:8]}) > 2  # the samples differ from one another
    assert prefills[1:] == [1] * 16


def test_logprobs_are_the_models(model, tok):
    with Engine(model, tok) as eng:
        c = eng.run([[8, 9, 10]], SamplingParams(max_tokens=5, temperature=0, logprobs=True))[0]
    ids = [8, 9, 10, *c.tokens]
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    want = torch.log_softmax(logits[0], -1)[torch.arange(2, 7), torch.tensor(c.tokens)]
    assert torch.allclose(torch.tensor(c.logprobs), want, atol=1e-4)


def test_sampling_filters():
    logits = torch.tensor([1.0, 5.0, 3.0, 4.9])
    top1 = filtered_probs(logits, SamplingParams(temperature=1.0, top_k=1))
    assert top1.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert filtered_probs(logits, SamplingParams(temperature=1.0, top_p=0.01)).argmax() == 1
    two = filtered_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert (two > 0).tolist() == [False, True, False, True]
    flat = filtered_probs(logits, SamplingParams(temperature=100.0))
    assert (flat > 0.2).all()


def test_rows_drawn_together_follow_the_filtered_distribution():
    """Rows with the same parameters are drawn in one batch; each still follows its filtered distribution
    (top-p 0.7 keeps the two likeliest of five tokens here, renormalised)."""
    n = 20000
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0]).repeat(n, 1)
    p = SamplingParams(temperature=0.9, top_p=0.7)
    torch.manual_seed(0)
    freq = torch.bincount(torch.tensor(choose(logits, [p] * n, [None] * n)), minlength=5) / n
    want = filtered_probs(logits[0], p)
    assert (want > 0).tolist() == [True, True, False, False, False]
    assert torch.allclose(freq, want, atol=0.015)


def test_a_draw_takes_one_number_of_its_stream_and_the_same_alone_as_in_a_batch():
    """Speculative decoding and batching rely on it: the k-th draw of a seed uses the k-th number of its
    stream, whatever row it sits in."""
    from slm.infer.sampling import sample

    p = SamplingParams(temperature=1.0)
    logits = torch.randn(3, 50_000, generator=torch.Generator().manual_seed(1)) * 3
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    together = [sample(logits, p, gens) for _ in range(4)]
    for r, s in enumerate((5, 6, 7)):
        g = torch.Generator().manual_seed(s)
        torch.rand(2, generator=g, dtype=torch.float64)  # skip the first two draws' numbers
        third = sample(logits[r : r + 1], p, [g])[0]
        assert third == together[2][r]


@pytest.mark.parametrize(
    "bad, name",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_sampling_parameters_are_named(bad, name):
    with pytest.raises(SlmError, match=f"sampling parameter {name}"):
        sampling_params(**bad)


def test_prompts_beyond_the_context_are_refused_or_truncated(model, tok):
    with Engine(model, tok) as eng:
        with pytest.raises(SlmError, match=r"the prompt has 100 tokens; the model's context holds 64"):
            eng.submit(list(range(1, 101)), GREEDY)
        with pytest.raises(SlmError, match="outside the model's vocabulary"):
            eng.submit([1, 999], GREEDY)
        sid = eng.submit(list(range(1, 101)), SamplingParams(max_tokens=3, temperature=0), truncate=True)
        while eng.has_work:
            eng.step()
        assert eng.result(sid).prompt_tokens == 63


def test_non_finite_logits_are_an_error(tok):
    m = Transformer(ModelConfig(n_layer=1, n_head=2, d_model=16, max_seq_len=32), 300)
    with torch.no_grad():
        m.lm_head.weight[0, 0] = float("nan")
    with Engine(m, tok) as eng, pytest.raises(SlmError, match="non-finite logits"):
        eng.run([[1, 2]], GREEDY)
