from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from slm.config import ModelConfig
from slm.errors import SlmError
from slm.eval.evaluate import evaluate
from slm.eval.harness import choice_logprobs, extract_answer
from slm.eval.tasks import Item, load_task
from slm.model.score import score, text_bpb, tokens_bpb, windows_of
from slm.model.transformer import Transformer
from slm.tokenizer import token_byte_lengths, train_tokenizer

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["the cat sat on the mat. the dog ate the bone. " * 40], vocab_size=300)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(ModelConfig(n_layer=2, n_head=2, d_model=32, max_seq_len=48), 300).eval()


def full_logprob(model, ids: list[int], start: int) -> float:
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    lp = torch.log_softmax(logits[0], -1)
    return sum(float(lp[j - 1, ids[j]]) for j in range(start, len(ids)))


def test_choice_scores_equal_plain_forward(model, tok):
    item = Item("the cat sat on", [" the mat", " a dog that ate the bone", " x"], 0)
    got = choice_logprobs(model, tok, item, prefix="")
    ctx = tok.encode(item.prompt).ids
    for choice, got_score in zip(item.choices, got, strict=True):
        ids = ctx + tok.encode(choice).ids
        assert got_score == pytest.approx(full_logprob(model, ids, len(ctx)), abs=1e-4)


def test_answer_bpb_is_the_right_answers_bits_per_byte(model, tok):
    import math

    from slm.eval.harness import score_multiple_choice
    from slm.eval.tasks import Task, TaskSpec

    items = [Item("the cat sat on", ["the mat", "a dog"], 1), Item("the dog ate", ["the bone", "x"], 0)]
    task = Task(TaskSpec(name="t", type="multiple_choice", data="-", choice_prefix=" "), items, Path("-"))
    got = score_multiple_choice(model, tok, task)
    bits = sum(-choice_logprobs(model, tok, it, " ")[it.answer] / math.log(2) for it in items)
    assert got["answer_bpb"] == pytest.approx(bits / (len(" a dog") + len(" the bone")), rel=1e-5)
    # lm-eval's standard error of a mean of 0/1 scores: sample standard deviation / sqrt(n)
    scores = torch.tensor([float(got["acc"] * 2 >= 1), float(got["acc"] * 2 >= 2)])
    assert got["acc_stderr"] == pytest.approx(float(scores.std() / 2**0.5))


def test_a_choice_the_context_cannot_hold_names_the_task_and_item(model, tok):
    from slm.eval.harness import score_multiple_choice
    from slm.eval.tasks import Task, TaskSpec

    long = " the cat sat on the mat" * 20  # far beyond the fixture model's 48 positions
    items = [Item("the dog", [" ate", " sat"], 0), Item("the cat", [long, " x"], 1), Item("", [" a b", " c"], 0)]
    task = Task(TaskSpec(name="t", type="multiple_choice", data="-"), items[:2], Path("t.yaml"))
    with pytest.raises(SlmError, match=r"task t \(t\.yaml\), item 2: a choice of \d+ tokens leaves no room"):
        score_multiple_choice(model, tok, task)
    task = Task(TaskSpec(name="t", type="multiple_choice", data="-"), items[2:], Path("t.yaml"))
    with pytest.raises(SlmError, match="item 1: the prompt encodes to no tokens"):
        score_multiple_choice(model, tok, task)


# min_saved=1 runs every shared prefix; at 12 the one-token "the" every head shares is not worth a
# forward, and the search goes deeper to find the two heads.
@pytest.mark.parametrize("min_saved", [1, 12])
def test_prefix_tree_scoring_equals_plain_forwards_and_computes_less(model, tok, min_saved):
    from slm.eval.harness import _encode_item, _fit, _Scorer

    words = [w for w in (tok.decode([i]) for i in range(260, 300)) if len(tok.encode(w).ids) == 1][:3]
    assert len(words) == 3
    head_a, head_b = "the cat sat on the mat. the dog ate the bone. ", "the dog sat on the mat. the cat ate "
    prompts = [head_a + p for p in ("the cat sat on", "the dog", "a mat. the dog ate the", "the cat", "a")]
    prompts += [head_b + p for p in ("the bone", "the mat. the dog", "a cat")] + ["bone", "mat. the cat sat"]
    # one-token choices (batched rows) and longer ones (a batch of choices per prompt), under both heads
    items = [Item(p, words if i % 3 else [" the mat", " a dog that ate", " x"], 0) for i, p in enumerate(prompts)]
    encoded = [_fit(*_encode_item(tok, it, ""), model.cfg.max_seq_len) for it in items]
    positions = []
    hidden = model.hidden

    def counting(idx, cache=None):
        assert not torch.is_grad_enabled()  # prefix forwards included: no autograd graph in scoring
        positions.append(idx.numel())
        return hidden(idx, cache=cache)

    model.hidden = counting
    try:
        done: list[int] = []
        shared = _Scorer(model, encoded, 2, min_saved, done.append).run()
        shared_positions, positions[:] = sum(positions), []
        plain = _Scorer(model, encoded, 2, 10**9, lambda i: None).run()
        plain_positions = sum(positions)
    finally:
        del model.hidden
    assert sorted(done) == list(range(len(items)))
    for (ctx, conts), got, unshared in zip(encoded, shared, plain, strict=True):
        want = [full_logprob(model, ctx + c, len(ctx)) for c in conts]
        assert got == pytest.approx(want, abs=1e-4) and unshared == pytest.approx(want, abs=1e-4)
    # the two heads run once each instead of once per prompt
    head_tokens = len(tok.encode(head_a).ids) + len(tok.encode(head_b).ids)
    assert plain_positions - shared_positions >= head_tokens


def test_a_long_prompt_does_not_pad_a_batch_of_short_ones(model, tok, monkeypatch):
    import slm.eval.harness as harness

    words = [w for w in (tok.decode([i]) for i in range(260, 300)) if len(tok.encode(w).ids) == 1][:2]
    prompts = ["the cat", "a dog", "the mat", "the bone", "a cat sat", "the dog ate", "mat", "the cat sat on the " * 8]
    encoded = [harness._fit(*harness._encode_item(tok, Item(p, words, 0), ""), 48) for p in prompts]
    monkeypatch.setattr(harness, "ROW_TOKENS", 8)  # a budget of 64 positions for 8 rows
    positions = []
    hidden = model.hidden

    def counting(idx, cache=None):
        positions.append(idx.numel())
        return hidden(idx, cache=cache)

    monkeypatch.setattr(model, "hidden", counting)
    scores = harness._Scorer(model, encoded, 8, 10**9, lambda i: None).run()
    short, long = [len(c) for c, _ in encoded[:7]], len(encoded[7][0])
    assert long > 4 * max(short)
    assert positions == [7 * max(short), long]  # the short ones pad to their own longest, not to the long one
    for (ctx, conts), got in zip(encoded, scores, strict=True):
        assert got == pytest.approx([full_logprob(model, ctx + c, len(ctx)) for c in conts], abs=1e-4)


def window_nll(model, ids: list[int], new: int) -> float:
    """NLL of the last `new` tokens of ids, from one forward over all but the last token."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[:-1]]))
    lp = torch.log_softmax(logits[0], -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    return -float(lp[len(ids) - 1 - new :].sum())


def test_the_scorer_predicts_every_token_once_in_any_windows(model):
    """Sequences of many lengths, cut into windows of any stride and batched across sequences, score exactly what
    a plain forward over each sequence gives (the one scorer behind training, eval, select)."""
    torch.manual_seed(7)
    seqs = [torch.randint(0, 300, (n,)).tolist() for n in (1, 2, 30, 48, 49, 120, 7)]
    for window, stride in ((48, 48), (16, 16), (16, 5), (48, 24)):
        got = score(model, seqs, window, stride, batch_size=3)
        for s, (nll, n) in zip(seqs, got, strict=True):
            assert n == max(len(s) - 1, 0)
            if len(s) <= window and n:
                assert nll == pytest.approx(-full_logprob(model, s, 1), rel=1e-5)
            # each window alone, through a plain forward: its last `new` targets
            want = sum(window_nll(model, s[b:e], new) for b, e, new in windows_of(len(s), window, stride))
            assert nll == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert [(b, e) for b, e, _ in windows_of(100, 16, 16)][:2] == [(0, 17), (16, 33)]
    assert sum(new for *_, new in windows_of(100, 16, 5)) == 99


def test_tokens_bpb_counts_bytes_of_the_predicted_tokens(model, tok):
    ids = np.array(tok.encode("the cat sat on the mat. " * 20).ids)
    lengths = token_byte_lengths(tok)
    r = tokens_bpb(model, ids, lengths, 16)
    nll, n = score(model, [ids], 16)[0]
    assert r["tokens"] == n == len(ids) - 1 and r["bytes"] == int(lengths[ids[1:]].sum())
    assert r["bpb"] == pytest.approx(nll / 0.6931471805599453 / r["bytes"])
    assert tokens_bpb(model, ids, lengths, 16, max_tokens=20)["tokens"] == 20


def test_sliding_window_bpb_matches_direct_computation(model, tok):
    text = "the dog sat on the mat. " * 3
    ids = tok.encode(text).ids
    eos = tok.token_to_id("<|endoftext|>")
    assert len(ids) + 1 <= 48
    direct = -full_logprob(model, [eos, *ids], 1)
    nbytes = len(text.encode())
    r = text_bpb(model, tok, text, eos)
    assert r["bytes"] == nbytes and r["tokens"] == len(ids)
    assert r["bpb"] == pytest.approx(direct / nbytes / 0.6931471805599453, rel=1e-5)
    # A text longer than the window: every token is still scored exactly once.
    long = "the cat ate the mat and the dog sat on the bone. " * 30
    r2 = text_bpb(model, tok, long, eos, window=48, stride=16)
    assert r2["tokens"] == len(tok.encode(long).ids)
    assert r2["bytes"] == len(long.encode())
    assert sum(token_byte_lengths(tok)[tok.encode(long).ids]) == r2["bytes"]


def test_paired_difference_on_a_hand_computed_example():
    from slm.eval.harness import paired_difference

    # Differences 0, 1, -1, 0, 1: mean 0.2, sample variance (0.04 + 0.64 + 1.44 + 0.04 + 0.64) / 4 = 0.7.
    r = paired_difference([True, True, False, False, True], [True, False, True, False, False])
    assert r["difference"] == pytest.approx(0.2) and r["difference_stderr"] == pytest.approx((0.7 / 5) ** 0.5)
    assert (r["only_a"], r["only_b"], r["n"]) == (2, 1, 5)
    same = paired_difference([True, False, True], [True, False, True])  # identical verdicts: no doubt at all
    assert same["difference"] == 0 and same["difference_stderr"] == 0
    with pytest.raises(ValueError, match="same items"):
        paired_difference([True], [True, False])


def test_answer_extraction():
    assert extract_answer("The answer is 42.\n", r"(-?\d+)") == "42"
    assert extract_answer("no number", r"(\d+)") == ""
    assert extract_answer("  Paris ", None) == "Paris"


def write_task(tmp_path: Path, rows: list[str], **extra) -> Path:
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
    spec = {"name": "t", "type": "multiple_choice", "data": "d.jsonl", "prompt": "Q: {q}\nA:", **extra}
    p = tmp_path / "t.json"
    p.write_text(json.dumps(spec))
    return p


def test_task_file_errors_name_file_and_line(tmp_path: Path):
    good = json.dumps({"q": "x", "choices": ["a", "b"], "answer": 1})
    p = write_task(tmp_path, [good, "{not json"])
    with pytest.raises(SlmError, match=r"d\.jsonl:2: not valid JSON"):
        load_task(str(p))
    p = write_task(tmp_path, [good, json.dumps({"q": "x", "choices": ["only"], "answer": 0})])
    with pytest.raises(SlmError, match=r"d\.jsonl:2: 'choices' must be a list of at least two"):
        load_task(str(p))
    p = write_task(tmp_path, [json.dumps({"q": "x", "choices": ["a", "b"], "answer": 5})])
    with pytest.raises(SlmError, match="out of range"):
        load_task(str(p))
    p = write_task(tmp_path, [json.dumps({"question": "x", "choices": ["a", "b"], "answer": 0})])
    with pytest.raises(SlmError, match="field 'q' used in the prompt template is missing"):
        load_task(str(p))
    with pytest.raises(SlmError, match=r"not found; pass a task file or one of: .*mmlu_subset"):
        load_task("no_such_task")


def test_vendored_tasks_load_with_source_and_licence():
    from slm.eval.tasks import TASKS_DIR

    task = load_task("mmlu_subset")
    assert len(task.items) == 570
    assert len(load_task("mmlu_subset", num_fewshot=5).items) == 570  # five examples for every subject
    assert all(len(i.choices) == 4 and 0 <= i.answer < 4 for i in task.items)
    names = sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))
    assert len(names) >= 5 and sum(n.startswith("bigbench_") for n in names) >= 4
    for name in names:
        t = load_task(name)
        assert t.spec.source and t.spec.license, name
        assert all(0 <= i.answer < len(i.choices) for i in t.items), name


def test_mmlu_few_shot_prompts_follow_the_5_shot_protocol():
    rows = [json.loads(line) for line in (Path("tasks/data/mmlu_subset.jsonl")).read_text().splitlines()]
    dev = [json.loads(line) for line in (Path("tasks/data/mmlu_subset_dev.jsonl")).read_text().splitlines()]
    zero = load_task("mmlu_subset", limit=12)
    head = "The following are multiple choice questions (with answers) about {subject}.\n\n"
    body = "{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:"
    assert [i.prompt for i in zero.items] == [(head + body).format(**r) for r in rows[:12]]
    five = load_task("mmlu_subset", limit=12, num_fewshot=5)
    assert five.spec.num_fewshot == 5 and len(five.items) == 12
    item, row = five.items[11], rows[11]  # the second subject's second question
    shots = [d for d in dev if d["subject"] == row["subject"]][:5]
    assert len(shots) == 5 and not any(d["question"] == r["question"] for d in dev for r in rows)
    want = head.format(**row) + "".join(body.format(**d) + " " + "ABCD"[d["answer"]] + "\n\n" for d in shots)
    assert item.prompt == want + body.format(**row)
    assert item.choices == zero.items[11].choices and item.answer == zero.items[11].answer


def test_few_shot_from_the_task_data_never_shows_the_item(tmp_path: Path):
    rows = [json.dumps({"q": f"q{i}", "g": i % 2, "choices": ["x", "y"], "answer": i % 2}) for i in range(5)]
    p = write_task(tmp_path, rows, description="D\n", num_fewshot=2, fewshot_delimiter="|")
    task = load_task(str(p))
    assert task.items[0].prompt == "D\nQ: q1\nA: y|Q: q2\nA: x|Q: q0\nA:"
    assert task.items[3].prompt == "D\nQ: q0\nA: x|Q: q1\nA: y|Q: q3\nA:"
    assert load_task(str(p), limit=1, num_fewshot=0).items[0].prompt == "D\nQ: q0\nA:"
    grouped = write_task(tmp_path, rows, num_fewshot=2, fewshot_group="g")
    assert load_task(str(grouped), limit=1).items[0].prompt == "Q: q2\nA: x\n\nQ: q4\nA: x\n\nQ: q0\nA:"
    with pytest.raises(SlmError, match=r"d\.jsonl:2: 2 few-shot examples asked for, but only 1 exist with g = 1"):
        load_task(str(grouped))
    with pytest.raises(SlmError, match="fewshot_group field 'h' is missing"):
        load_task(str(write_task(tmp_path, rows, num_fewshot=1, fewshot_group="h")))
    with pytest.raises(SlmError, match=r"fewshot_data file .*nope\.jsonl not found"):
        load_task(str(write_task(tmp_path, rows, num_fewshot=1, fewshot_data="nope.jsonl")))
    with pytest.raises(SlmError, match="--num-fewshot -1"):
        load_task(str(p), num_fewshot=-1)


def test_evaluate_run_end_to_end(tiny_cfg, tmp_path: Path):
    from slm.run import Run
    from slm.train.loop import train

    train(tiny_cfg, Run(tmp_path / "run"), console=QUIET, progress=False)
    rows = [
        json.dumps({"q": f"{w} sat on the", "choices": [" mat", " bone"], "answer": i % 2})
        for i, w in enumerate(["cat", "dog", "rat", "bat"])
    ]
    task = write_task(tmp_path, rows)
    gen_rows = tmp_path / "g.jsonl"
    gen_rows.write_text(json.dumps({"question": "2+2=", "answer": "4"}) + "\n")
    gen = tmp_path / "g.yaml"
    gen.write_text("name: g\ntype: generate\ndata: g.jsonl\nanswer_regex: '(\\d+)'\nmax_new_tokens: 4\n")
    heldout = tmp_path / "corpus" / "hamlet.txt"
    r = evaluate(tmp_path / "run", [str(task), str(gen)], [str(heldout)], console=QUIET)
    assert r["tasks"]["t"]["n"] == 4 and 0 <= r["tasks"]["t"]["acc"] <= 1 and r["tasks"]["t"]["num_fewshot"] == 0
    shots = evaluate(
        tmp_path / "run", [str(task)], [], out=tmp_path / "s.json", console=QUIET, num_fewshot=2, samples=tmp_path / "s"
    )
    assert shots["tasks"]["t"]["num_fewshot"] == 2 and shots["tasks"]["t"]["n"] == 4
    recs = [json.loads(x) for x in (tmp_path / "s").read_text().splitlines()]  # one per item, with its scores
    assert [len(r["logprobs"]) for r in recs] == [2] * 4 and [r["answer"] for r in recs] == [0, 1, 0, 1]
    assert [r["correct"] for r in recs] == [int(np.argmax(r["logprobs"])) == r["answer"] for r in recs]
    assert sum(r["correct"] for r in recs) / 4 == pytest.approx(shots["tasks"]["t"]["acc"])
    from slm.eval.evaluate import results_table

    shown = Console(record=True, width=120)
    shown.print(results_table(shots))
    assert "t (2-shot)" in shown.export_text()
    assert r["tasks"]["g"]["n"] == 1
    assert 0 < r["texts"][str(heldout)]["bpb"] < 20
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["tasks"]["t"] == r["tasks"]["t"]
    # bf16 autocast scores the same items; text bits-per-byte moves only by rounding.
    rb = evaluate(
        tmp_path / "run", [str(task)], [str(heldout)], out=tmp_path / "b.json", console=QUIET, dtype="bfloat16"
    )
    assert rb["dtype"] == "bfloat16" and rb["tasks"]["t"]["n"] == 4
    assert abs(rb["texts"][str(heldout)]["bpb"] - r["texts"][str(heldout)]["bpb"]) < 0.05
    with pytest.raises(SlmError, match="float32 or bfloat16"):
        evaluate(tmp_path / "run", [], [str(heldout)], console=QUIET, dtype="fp8")


def test_choice_logprobs_agree_with_model_loss(model, tok):
    ids = tok.encode("the cat sat on the mat").ids
    x = torch.tensor([ids[:-1]])
    y = torch.tensor([ids[1:]])
    with torch.no_grad():
        logits, _ = model(x)
    ce = F.cross_entropy(logits[0], y[0], reduction="sum")
    assert -full_logprob(model, ids, 1) == pytest.approx(float(ce), rel=1e-5)
