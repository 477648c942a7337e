"""`slm data tasks NAME`: a verifiable task as training conversations and held-out test sets.

    OUT/train.jsonl          conversations for `slm sft` (one style, below)
    OUT/problems.jsonl       the training problems themselves: question, answer, rationale, meta
    OUT/problems.yaml        the same as a checkable task: what `slm rl` trains on and `slm synth` asks
    OUT/test.jsonl           held-out problems at the training difficulty: question, answer, rationale, meta
    OUT/test_harder.jsonl    the same, one step harder (level + 1)
    OUT/test.yaml, OUT/test_harder.yaml   task files `slm eval --tasks` runs: the question as a user message
                             in the model's chat template, the reply judged by the task's checker
    OUT/summary.json         counts, knobs, seed, and the overlap check

Train and test are disjoint by construction: a problem's split is decided by a hash of its question, so
the same question can never land on both sides (and the overlap is counted again after writing).

Styles of the assistant's reply (Distilling Step-by-Step, Hsieh et al. 2023, compares these):
  answer     "Answer: X"
  rationale  the program's step-by-step solution, then "Answer: X"
  multitask  two conversations per problem: "[answer] question" -> "Answer: X" and
             "[rationale] question" -> the solution; tests ask with "[answer]"
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import yaml

from slm.data.problems import TASKS, Problem, generate
from slm.errors import SlmError
from slm.run import atomic_write_text, refuse_existing

STYLES = ("answer", "rationale", "multitask")
TEST_SHARE = 0.2  # of question hashes reserved for tests
MAX_TRIES = 50  # draws per wanted problem before the space is called exhausted


def is_test(question: str) -> bool:
    h = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
    return h / 2**64 < TEST_SHARE


def reply(p: Problem, style: str) -> str:
    if style == "answer":
        return f"Answer: {p.answer}"
    return f"{p.rationale}\nAnswer: {p.answer}"


def conversations(p: Problem, style: str) -> list[dict[str, Any]]:
    def chat(user: str, assistant: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}

    if style == "multitask":
        return [
            chat(f"[answer] {p.question}", f"Answer: {p.answer}"),
            chat(f"[rationale] {p.question}", reply(p, "rationale")),
        ]
    return [chat(p.question, reply(p, style))]


def draw(task: str, n: int, rng: random.Random, level: int, test: bool, knobs: dict) -> list[Problem]:
    out: dict[str, Problem] = {}
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > MAX_TRIES * n + 1000:
            side = "test" if test else "training"
            raise SlmError(
                f"only {len(out)} distinct {side} problems of {task} at level {level} found, {n} asked for: "
                "ask for fewer or raise --level"
            )
        p = generate(task, rng, level, **knobs)
        if is_test(p.question) == test and p.question not in out:
            out[p.question] = p
    return list(out.values())


def make_tasks(
    task: str,
    out: Path,
    train: int = 5000,
    test: int = 500,
    level: int = 3,
    style: str = "rationale",
    seed: int = 0,
    ops: str = "+-",
    carries: bool | None = None,
    force: bool = False,
) -> dict[str, Any]:
    if task not in TASKS:
        raise SlmError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if style not in STYLES:
        raise SlmError(f"--style {style!r}: choose one of {', '.join(STYLES)}")
    if not 1 <= level <= (9 if task == "arithmetic" else 6):
        top = 9 if task == "arithmetic" else 6
        raise SlmError(f"--level {level}: {task} takes 1 to {top} (arithmetic: digits; countdown: numbers, 2+)")
    if task == "countdown" and level < 2:
        raise SlmError("--level 1: countdown needs at least 2 numbers")
    if train < 1 or test < 1:
        raise SlmError(f"--train and --test must be at least 1 (got {train} and {test})")
    bad = set(ops) - set("+-*")
    if task == "arithmetic" and (bad or not ops):
        raise SlmError(f"--ops {ops!r}: use some of + - * (e.g. '+-')")
    refuse_existing(out, force)
    knobs = {"ops": ops, "carries": carries} if task == "arithmetic" else {}
    rng = random.Random(seed)
    sets = {
        "train": draw(task, train, rng, level, False, knobs),
        "test": draw(task, test, rng, level, True, knobs),
        "test_harder": draw(task, test, rng, level + 1, True, knobs),
    }
    train_q = {p.question for p in sets["train"]}
    overlap = sum(p.question in train_q for name in ("test", "test_harder") for p in sets[name])
    if overlap:  # cannot happen: the split is a function of the question
        raise SlmError(f"internal error: {overlap} test questions are also training questions")
    out.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(c, ensure_ascii=False) for p in sets["train"] for c in conversations(p, style)]
    atomic_write_text(out / "train.jsonl", "\n".join(lines) + "\n")
    prefix = "[answer] " if style == "multitask" else ""
    for name, probs in (("problems", sets["train"]), ("test", sets["test"]), ("test_harder", sets["test_harder"])):
        rows = [
            {"question": prefix + p.question, "answer": p.answer, "rationale": p.rationale, "meta": p.meta}
            for p in probs
        ]
        atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        spec = {
            "name": f"{task}_{name}",
            "type": "generate",
            "data": f"{name}.jsonl",
            "prompt": "{question}",
            "chat": True,
            "checker": task,
            "stop": [],
            "max_new_tokens": 24 if style in ("answer", "multitask") else 64 + 48 * (level + 1),
            "source": f"slm data tasks {task} --level {level} --seed {seed}",
            "license": "generated",
        }
        atomic_write_text(out / f"{name}.yaml", yaml.safe_dump(spec, sort_keys=False))
    summary = {
        "task": task,
        "level": level,
        "style": style,
        "seed": seed,
        "knobs": knobs,
        "train_problems": len(sets["train"]),
        "train_conversations": len(lines),
        "test": len(sets["test"]),
        "test_harder": len(sets["test_harder"]),
        "test_harder_level": level + 1,
        "overlap": overlap,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
