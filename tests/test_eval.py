from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from slm.config import ModelConfig
from slm.errors import SlmError
from slm.eval.evaluate import evaluate
from slm.eval.harness import choice_logprobs, extract_answer, text_bpb
from slm.eval.tasks import Item, load_task
from slm.model.transformer import Transformer
from slm.tokenizer import token_byte_lengths, train_tokenizer

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["the cat sat on the mat. the dog ate the bone. " * 40], vocab_size=300)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=300, n_layer=2, n_head=2, d_model=32, max_seq_len=48)).eval()


def full_logprob(model, ids: list[int], start: int) -> float:
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    lp = torch.log_softmax(logits[0], -1)
    return sum(float(lp[j - 1, ids[j]]) for j in range(start, len(ids)))


def test_choice_scores_equal_plain_forward(model, tok):
    item = Item("the cat sat on", [" the mat", " a dog that ate the bone", " x"], 0)
    got = choice_logprobs(model, tok, item, prefix="")
    ctx = tok.encode(item.prompt).ids
    for choice, score in zip(item.choices, got, strict=True):
        ids = ctx + tok.encode(choice).ids
        assert score == pytest.approx(full_logprob(model, ids, len(ctx)), abs=1e-4)


def test_answer_bpb_is_the_right_answers_bits_per_byte(model, tok):
    import math

    from slm.eval.harness import score_multiple_choice
    from slm.eval.tasks import Task, TaskSpec

    items = [Item("the cat sat on", ["the mat", "a dog"], 1), Item("the dog ate", ["the bone", "x"], 0)]
    task = Task(TaskSpec(name="t", type="multiple_choice", data="-", choice_prefix=" "), items, Path("-"))
    got = score_multiple_choice(model, tok, task)
    bits = sum(-choice_logprobs(model, tok, it, " ")[it.answer] / math.log(2) for it in items)
    assert got["answer_bpb"] == pytest.approx(bits / (len(" a dog") + len(" the bone")), rel=1e-5)


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


def test_batched_single_token_scoring_equals_per_item(model, tok):
    from slm.eval.harness import _encode_item, common_prefix, single_token_logprobs

    words = [w for w in (tok.decode([i]) for i in range(260, 300)) if len(tok.encode(w).ids) == 1][:3]
    assert len(words) == 3
    items = [Item(p, words, 0) for p in ("the cat sat on", "the dog", "a mat. the dog ate the")]
    enc = [_encode_item(tok, it, "") for it in items]
    assert all(len(c) == 1 for _, conts in enc for c in conts)
    batched = single_token_logprobs(model, [(ctx, [c[0] for c in conts]) for ctx, conts in enc])
    for item, got in zip(items, batched, strict=True):
        assert got == pytest.approx(choice_logprobs(model, tok, item, ""), abs=1e-4)
    # prompts sharing a prefix: it runs once and the rows continue from its cache, with the same scores
    head = "the cat sat on the mat. the dog ate the bone. "
    items = [Item(head + p, words, 0) for p in ("the cat sat on", "the dog", "a mat. the dog ate the")]
    enc = [_encode_item(tok, it, "") for it in items]
    assert common_prefix([ctx for ctx, _ in enc]) >= 8
    batched = single_token_logprobs(model, [(ctx, [c[0] for c in conts]) for ctx, conts in enc], min_shared=8)
    for item, got in zip(items, batched, strict=True):
        assert got == pytest.approx(choice_logprobs(model, tok, item, ""), abs=1e-4)
    assert common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == 1 and common_prefix([[5, 6], [5, 6]]) == 1


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
    assert all(len(i.choices) == 4 and 0 <= i.answer < 4 for i in task.items)
    names = sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))
    assert len(names) >= 5 and sum(n.startswith("bigbench_") for n in names) >= 4
    for name in names:
        t = load_task(name)
        assert t.spec.source and t.spec.license, name
        assert all(0 <= i.answer < len(i.choices) for i in t.items), name


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
    assert r["tasks"]["t"]["n"] == 4 and 0 <= r["tasks"]["t"]["acc"] <= 1
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
