"""`slm synth`: a teacher's replies judged, rejection-sampled, deduplicated and counted; a killed run resumes
without losing or repeating a conversation. The teacher is the tiny chat model of conftest's `sft_run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slm.data import checkers
from slm.errors import SlmError
from slm.synth import generate as synth
from slm.synth.generate import SynthSettings, synthesize


class Killed(BaseException):
    pass


def settings(base: Path, **kw) -> SynthSettings:
    return SynthSettings(teacher=str(base / "sft"), task=str(base / "t/problems.yaml"), **kw)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_rejection_sampling_keeps_only_right_replies_and_counts_the_rest(sft_run: Path, tmp_path: Path):
    s = synthesize(settings(sft_run, samples=4, keep=2, temperature=1.0, part_size=16), tmp_path / "o")
    rows = lines(tmp_path / "o/train.jsonl")
    problems = {p["question"]: p for p in lines(sft_run / "t/problems.jsonl")}
    assert rows and len(rows) == s["conversations"]
    for r in rows:  # the item's own question as the user turn, a reply its checker accepts as the assistant's
        user, reply = r["messages"][0]["content"], r["messages"][1]["content"]
        assert checkers.check_arithmetic(problems[user], reply)
    per_prompt: dict[str, int] = {}
    for r in rows:
        per_prompt[r["messages"][0]["content"]] = per_prompt.get(r["messages"][0]["content"], 0) + 1
    assert max(per_prompt.values()) <= 2
    f = s["funnel"]["steps"]
    assert s["generated"] == 60 * 4 == f["generate"]["seen"]
    for step in ("generate", "length", "check", "keep", "exact_dedup", "near_dedup"):  # every reply accounted for
        assert f[step]["kept"] + sum(f[step]["dropped"].values()) == f[step]["seen"], step
    assert f["check"]["kept"] == s["passed_check"] and 0 < s["pass_rate"] < 1
    assert f["near_dedup"]["kept"] == len(rows) and s["teacher_tokens_per_sec"] > 0
    assert len({r["messages"][1]["content"] + r["messages"][0]["content"] for r in rows}) == len(rows)


def test_duplicates_are_removed_exactly_and_nearly(sft_run: Path, tmp_path: Path):
    """Unchecked, kept four times over at a low temperature: most replies repeat and only the first stays."""
    s = synthesize(settings(sft_run, samples=4, keep=4, check="none", temperature=0.05, limit=20), tmp_path / "o")
    f = s["funnel"]["steps"]
    replies = [r["messages"][1]["content"] for r in lines(tmp_path / "o/train.jsonl")]
    assert f["exact_dedup"]["dropped"]["exact_duplicate"] > 0
    assert len(set(replies)) == len(replies) == s["conversations"]


def test_a_killed_run_resumes_without_loss_or_repeats(sft_run: Path, tmp_path: Path, monkeypatch):
    want = synthesize(settings(sft_run, part_size=15), tmp_path / "whole")
    real = synth.synth_part
    calls, dies = [], {2}

    def dies_on_the_third_part(settings, out, part):
        calls.append(part)
        if part in dies:
            raise Killed  # a kill: not an Exception, so not a job failure the executor records
        return real(settings, out, part)

    monkeypatch.setattr(synth, "synth_part", dies_on_the_third_part)
    with pytest.raises(Killed):
        synthesize(settings(sft_run, part_size=15), tmp_path / "o")
    assert not (tmp_path / "o/train.jsonl").exists() and len(list((tmp_path / "o/parts").glob("part-*"))) == 2
    calls.clear()
    dies.clear()
    got = synthesize(settings(sft_run, part_size=15), tmp_path / "o")
    assert calls == [2, 3]  # finished parts are not redone
    assert (tmp_path / "o/train.jsonl").read_text() == (tmp_path / "whole/train.jsonl").read_text()
    assert got["funnel"] == want["funnel"]
    with pytest.raises(SlmError, match=r"other settings \(samples\)"):
        synthesize(settings(sft_run, part_size=15, samples=2), tmp_path / "o")


def test_a_raising_check_and_empty_replies_are_counted(sft_run: Path, tmp_path: Path, monkeypatch):
    def picky(row, text):
        if row["meta"]["a"] == 3:
            raise ValueError("no threes")
        return True

    monkeypatch.setitem(checkers.CHECKERS, "arithmetic", picky)
    s = synthesize(settings(sft_run, samples=2, keep=1, part_size=100), tmp_path / "o")
    threes = sum(p["meta"]["a"] == 3 for p in lines(sft_run / "t/problems.jsonl"))
    f = s["funnel"]
    assert f["steps"]["check"]["dropped"]["checker_error"] == 2 * threes > 0
    assert "the check raised ValueError: no threes" in f["errors"][0] and "item" in f["errors"][0]

    class Silent(synth.Engine):  # a teacher that says nothing at all
        def run(self, prompts, params):
            return [c.__class__(**{**c.__dict__, "text": "  "}) for c in super().run(prompts, params)]

    monkeypatch.setattr(synth, "Engine", Silent)
    s = synthesize(settings(sft_run, samples=2, limit=5), tmp_path / "silent")
    assert s["funnel"]["steps"]["generate"]["dropped"] == {"empty": 10} and s["conversations"] == 0


@pytest.mark.parametrize(
    ("kw", "phrase"),
    [
        ({"keep": 5, "samples": 4}, "--keep 5 is more than --samples 4"),
        ({"samples": 2, "temperature": 0.0}, "--temperature 0"),
        ({"check": "regex:(oops"}, "not a valid regular expression"),
        ({"check": "no_such_module:f"}, "cannot import it"),
        ({"template": "{nothing}"}, "cannot fill it"),
        ({"task": "no_such_task"}, "task 'no_such_task' not found"),
        ({"teacher": "/no/such/model"}, "not found"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(sft_run: Path, tmp_path: Path, kw, phrase):
    base = {"teacher": str(sft_run / "sft"), "task": str(sft_run / "t/problems.yaml")}
    with pytest.raises(SlmError, match=phrase.replace("(", r"\(").replace("[", r"\[")):
        synthesize(SynthSettings(**{**base, **kw}), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_a_reply_cut_off_at_max_tokens_is_dropped_as_truncated(sft_run: Path, tmp_path: Path):
    """The arithmetic checker falls back to a reply's last number, so a cut-off reply could pass: never kept."""
    s = synthesize(settings(sft_run, samples=2, max_tokens=2, limit=10, check="none"), tmp_path / "o")
    f = s["funnel"]["steps"]
    assert f["length"]["dropped"].get("truncated", 0) == f["length"]["seen"] > 0
    assert s["conversations"] == 0
    full = synthesize(settings(sft_run, samples=2, limit=10, check="none"), tmp_path / "p")
    assert "truncated" not in full["funnel"]["steps"]["length"]["dropped"] and full["conversations"] > 0
