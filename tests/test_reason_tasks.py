"""Verifiable tasks written by programs (`slm data tasks`): rationales that reach the answer, checkers that
accept every right answer and refuse wrong ones, train and test disjoint by a hash, and `slm eval` judging
replies by the task's checker, in the model's chat template."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from slm.config import load_config
from slm.data import checkers
from slm.data.checkers import check_arithmetic, check_countdown, evaluate_expression, final_answer
from slm.data.problem_sets import is_test, make_tasks
from slm.data.problems import arithmetic, countdown, solve_countdown
from slm.errors import SlmError
from slm.eval.evaluate import evaluate
from slm.eval.tasks import load_task
from slm.run import Run
from slm.train.loop import train

from .conftest import tiny_overrides


@pytest.mark.parametrize("ops", ["+", "-", "*"])
@pytest.mark.parametrize("level", [1, 3, 6])
def test_arithmetic_rationales_end_in_the_right_answer(ops, level):
    rng = random.Random(level)
    for _ in range(30):
        p = arithmetic(rng, level, ops)
        a, b = p.meta["a"], p.meta["b"]
        assert int(p.answer) == {"+": a + b, "-": a - b, "*": a * b}[ops]
        assert len(str(a)) == level or level == 1
        assert p.rationale.endswith(f"= {p.answer}.")
        assert check_arithmetic({"answer": p.answer}, f"{p.rationale}\nAnswer: {p.answer}")
        assert not check_arithmetic({"answer": p.answer}, f"{p.rationale}\nAnswer: {int(p.answer) + 1}")


def test_carries_knob_and_column_steps():
    rng = random.Random(0)
    for _ in range(20):
        p = arithmetic(rng, 4, "+", carries=True)
        assert "carry" in p.rationale
        q = arithmetic(rng, 4, "+", carries=False)
        assert "carry" not in q.rationale
    p = arithmetic(random.Random(3), 3, "-", carries=True)
    assert "borrow" in p.rationale


def test_countdown_problems_are_solvable_and_checked_by_value():
    rng = random.Random(1)
    for level in (2, 3, 4):
        for _ in range(10):
            p = countdown(rng, level)
            assert len(p.meta["numbers"]) == level and p.meta["target"] not in p.meta["numbers"]
            assert check_countdown(p.meta, f"Answer: {p.answer}")
    meta = {"numbers": [25, 5, 4, 3], "target": 83}
    assert check_countdown(meta, "Some thinking.\nAnswer: (25 - 5) * 4 + 3")
    assert check_countdown(meta, "Answer: 3 + 4 * (25 - 5)")  # another right expression
    assert not check_countdown(meta, "Answer: 25 * 3 + 4 + 4")  # 4 used twice
    assert not check_countdown(meta, "Answer: 80 + 3")  # 80 is not given
    assert not check_countdown(meta, "Answer: __import__('os')")
    assert not check_countdown(meta, "Answer: (25 - 5) * 4")  # 80, not 83
    assert evaluate_expression("7 / 2") is not None and evaluate_expression("1 / 0") is None
    assert solve_countdown([2, 3], 7) is None and solve_countdown([2, 3], 6) == [(2, "*", 3, 6)]


def test_final_answer_reads_after_the_last_answer_mark():
    assert final_answer("steps\nAnswer: 12\nmore") == "12"
    assert final_answer("Answer: 1\nAnswer: 2") == "2"
    assert final_answer("no mark\nlast line 7") == "last line 7"
    assert final_answer("") == ""


def test_make_tasks_splits_by_hash_and_writes_what_sft_and_eval_read(tmp_path: Path):
    s = make_tasks("arithmetic", tmp_path / "t", train=200, test=40, level=2, style="rationale", ops="+-")
    assert s["overlap"] == 0 and s["train_problems"] == 200 and s["test"] == s["test_harder"] == 40
    train_rows = [json.loads(x) for x in (tmp_path / "t/train.jsonl").read_text().splitlines()]
    questions = {r["messages"][0]["content"] for r in train_rows}
    assert len(questions) == 200 and not any(is_test(q) for q in questions)
    assert all(r["messages"][1]["content"].splitlines()[-1].startswith("Answer: ") for r in train_rows)
    for name, digits in (("test", 2), ("test_harder", 3)):
        rows = [json.loads(x) for x in (tmp_path / f"t/{name}.jsonl").read_text().splitlines()]
        assert all(is_test(r["question"]) and r["question"] not in questions for r in rows)
        assert all(len(str(r["meta"]["a"])) == digits for r in rows)
        task = load_task(str(tmp_path / f"t/{name}.yaml"))
        assert task.spec.checker == "arithmetic" and task.spec.chat and len(task.items) == 40
    again = make_tasks("arithmetic", tmp_path / "t2", train=200, test=40, level=2, style="rationale", ops="+-")
    assert again == s and (tmp_path / "t2/train.jsonl").read_text() == (tmp_path / "t/train.jsonl").read_text()
    make_tasks("countdown", tmp_path / "m", train=30, test=5, level=3, style="multitask")
    rows = [json.loads(x) for x in (tmp_path / "m/train.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and rows[0]["messages"][0]["content"].startswith("[answer] ")
    assert rows[1]["messages"][0]["content"].startswith("[rationale] ")
    assert json.loads((tmp_path / "m/test.jsonl").read_text().splitlines()[0])["question"].startswith("[answer] ")


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        (dict(task="algebra"), "unknown task"),
        (dict(style="essay"), "--style"),
        (dict(level=0), "--level 0"),
        (dict(task="countdown", level=1), "at least 2 numbers"),
        (dict(ops="/"), "--ops"),
        (dict(train=0), "at least 1"),
        (dict(level=1, train=5000), "distinct training problems"),
    ],
)
def test_bad_task_requests_are_named(tmp_path: Path, kwargs, phrase):
    args = dict(task="arithmetic", out=tmp_path / "o", train=20, test=5) | kwargs
    with pytest.raises(SlmError, match=phrase):
        make_tasks(**args)
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> Path:
    from .conftest import make_corpus

    tmp = tmp_path_factory.mktemp("reason")
    cfg = load_config(None, [*tiny_overrides(make_corpus(tmp), tmp / "runs"), "tokenizer.chat_tokens=true"])
    train(cfg, Run(tmp / "run"), console=Console(quiet=True), progress=False)
    return tmp / "run"


def test_eval_judges_replies_with_the_tasks_checker_in_the_chat_template(chat_run, tmp_path, monkeypatch):
    make_tasks("arithmetic", tmp_path / "t", train=10, test=6, level=2, style="answer")
    seen: list[tuple[dict, str]] = []

    def judge(row, text):  # every item's record and the model's reply reach the checker
        seen.append((row, text))
        return row["meta"]["a"] % 2 == 0

    monkeypatch.setitem(checkers.CHECKERS, "arithmetic", judge)
    r = evaluate(str(chat_run), [str(tmp_path / "t/test.yaml")], [], console=Console(quiet=True))
    want = sum(row["meta"]["a"] % 2 == 0 for row, _ in seen) / 6
    assert len(seen) == 6 and r["tasks"]["arithmetic_test"]["exact_match"] == pytest.approx(want)
    assert {row["answer"] for row, _ in seen} == {
        json.loads(x)["answer"] for x in (tmp_path / "t/test.jsonl").read_text().splitlines()
    }
    spec = yaml.safe_load((tmp_path / "t/test.yaml").read_text())
    (tmp_path / "t/bad.yaml").write_text(yaml.safe_dump(spec | {"checker": "nope"}))
    with pytest.raises(SlmError, match="checker 'nope' is not one of"):
        load_task(str(tmp_path / "t/bad.yaml"))


def test_eval_samples_hold_every_reply_and_compare_pairs_them_item_by_item(chat_run, tmp_path, monkeypatch):
    make_tasks("arithmetic", tmp_path / "t", train=10, test=6, level=2, style="answer")
    task = str(tmp_path / "t/test.yaml")
    rows = [json.loads(x) for x in (tmp_path / "t/test.jsonl").read_text().splitlines()]
    monkeypatch.setitem(checkers.CHECKERS, "arithmetic", lambda row, text: row["meta"]["a"] % 2 == 0)
    quiet = Console(quiet=True)
    a = evaluate(str(chat_run), [task], [], console=quiet, out=tmp_path / "a.json", samples=tmp_path / "a.jsonl")
    recs = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    mine = [row["meta"]["a"] % 2 == 0 for row in rows]
    assert [r["index"] for r in recs] == list(range(6)) and {r["task"] for r in recs} == {"arithmetic_test"}
    assert [r["correct"] for r in recs] == mine and [r["answer"] for r in recs] == [row["answer"] for row in rows]
    assert all(isinstance(r["reply"], str) for r in recs) and a["samples"] == str(tmp_path / "a.jsonl")
    assert a["tasks"]["arithmetic_test"]["exact_match"] == pytest.approx(sum(mine) / 6)
    # Another model's verdicts on the same items: the first two right, the rest wrong.
    theirs = [i < 2 for i in range(6)]
    other = tmp_path / "b.jsonl"
    other.write_text("".join(json.dumps(r | {"correct": t}) + "\n" for r, t in zip(recs, theirs, strict=True)))
    b = evaluate(str(chat_run), [task], [], console=quiet, out=tmp_path / "b.json", compare=other)
    c = b["tasks"]["arithmetic_test"]["compared"]
    d = [int(m) - int(t) for m, t in zip(mine, theirs, strict=True)]
    mean = sum(d) / 6
    assert c["difference"] == pytest.approx(mean) and c["n"] == 6 and c["against"] == str(other)
    assert c["difference_stderr"] == pytest.approx((sum((x - mean) ** 2 for x in d) / 5 / 6) ** 0.5)
    assert (c["only_a"], c["only_b"]) == (d.count(1), d.count(-1))
    # Not the same items, not a samples file, no file: refused before the model loads, naming the file.
    with pytest.raises(SlmError, match=r"b\.jsonl has 6 items of task arithmetic_test, this evaluation 3"):
        evaluate(str(chat_run), [task], [], console=quiet, limit=3, compare=other)
    other.write_text(json.dumps(recs[0]) + "\n" + "[1, 2]\n")
    with pytest.raises(SlmError, match=r"b\.jsonl, line 2: not a record of `slm eval --samples`"):
        evaluate(str(chat_run), [task], [], console=quiet, compare=other)
    with pytest.raises(SlmError, match=r"nope\.jsonl not found"):
        evaluate(str(chat_run), [task], [], console=quiet, compare=tmp_path / "nope.jsonl")


def test_a_chat_task_refuses_a_base_model(tiny_cfg, tmp_path: Path):
    train(tiny_cfg, Run(tmp_path / "base"), console=Console(quiet=True), progress=False)
    make_tasks("arithmetic", tmp_path / "t", train=10, test=3, level=2, style="answer")
    with pytest.raises(SlmError, match="no chat template"):
        evaluate(str(tmp_path / "base"), [str(tmp_path / "t/test.yaml")], [], console=Console(quiet=True))


def test_from_problems_to_a_trained_reasoner_end_to_end(sft_run: Path, tmp_path: Path, monkeypatch):
    """The loop a user runs: problems, a tokenizer with ChatML marks, SFT from scratch (conftest's `sft_run`
    does these), eval by checker. A tiny model learns the reply's format for sure (its accuracy on unseen
    sums is what benchmarks measure)."""
    replies: list[str] = []
    real = checkers.CHECKERS["arithmetic"]

    def judge(row, text):
        replies.append(text)
        return real(row, text)

    monkeypatch.setitem(checkers.CHECKERS, "arithmetic", judge)
    r = evaluate(
        str(sft_run / "sft"), [str(sft_run / "t/test.yaml")], [], console=Console(quiet=True), out=tmp_path / "e.json"
    )
    assert len(replies) == 10
    assert sum(bool(re.fullmatch(r"Answer: \d+", t.strip())) for t in replies) >= 9  # the format was learned
    got = r["tasks"]["arithmetic_test"]["exact_match"]
    rows = [json.loads(x) for x in (sft_run / "t/test.jsonl").read_text().splitlines()]
    assert got == pytest.approx(sum(real(row, t) for row, t in zip(rows, replies, strict=True)) / 10)
