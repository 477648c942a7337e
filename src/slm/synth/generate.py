"""`slm synth`: training conversations written by a teacher model, checked, deduplicated and counted.

    slm synth TEACHER --task tasks/add2/problems.yaml --out synth/add2 [--samples 4] [--keep 1]

Each item of a generate task file is a seed: its prompt (optionally rewritten by --template from the item's
fields) goes to the teacher, --samples times, batched on the generation engine. Every reply is length-
filtered and judged (the task's checker or answer_regex, as `slm eval` judges; a regex; a Python predicate;
or nothing), and up to --keep passing replies per prompt are kept: rejection sampling. The kept ones become
conversations: the item's own prompt as the user turn, the teacher's reply as the assistant's.

    OUT/synth.json                  the settings; a rerun with other settings is refused (--force restarts)
    OUT/parts/part-00000/           one part of the prompts, appearing whole (run.atomic_dir) once it is done:
        train.jsonl                 its kept conversations
        exact.npy, bands.npy        their dedup signatures (content hash, MinHash bands), as the data pipeline's
        part.json                   its funnel, generated tokens and seconds
    OUT/train.jsonl                 every part's conversations less exact and near duplicates (first kept)
    OUT/summary.json                the funnel (generated, failed by reason, kept, duplicates), teacher tokens/s

A killed run resumes where it stopped: finished parts are skipped, the part in flight is redone whole, and
train.jsonl is rebuilt from the parts, so no conversation is lost or written twice.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slm.config import DedupConfig, SamplingParams
from slm.data.dedup import Signer, find_duplicates
from slm.data.stats import Funnel
from slm.errors import SlmError
from slm.eval.harness import has_answer, item_prompt, judge
from slm.eval.tasks import Item, Task, load_generate_task, load_task
from slm.executor import Outcome, run_jobs
from slm.infer.engine import Engine
from slm.infer.sampling import seed_for
from slm.infer.template import chat_format
from slm.model.load import Loaded, load_model
from slm.run import atomic_dir, atomic_write_text, refuse_existing
from slm.tokenizer import end_ids


@dataclass
class SynthSettings:
    teacher: str
    task: str
    template: str | None = None  # e.g. "Think step by step, then end with 'Answer: N'. {question}"
    check: str = "task"  # task | none | regex:PATTERN | module:function (a predicate f(row, text) -> bool)
    samples: int = 4
    keep: int = 1
    temperature: float = 0.8
    top_p: float | None = 0.95
    max_tokens: int | None = None  # default the task's max_new_tokens
    min_chars: int = 1
    max_chars: int = 4000
    part_size: int = 256
    limit: int | None = None  # the first N items only
    seed: int = 0
    max_batch: int = 32


def validate(s: SynthSettings) -> None:
    for name in ("samples", "keep", "part_size", "max_batch"):
        if getattr(s, name) < 1:
            raise SlmError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(s, name)})")
    if s.keep > s.samples:
        raise SlmError(f"--keep {s.keep} is more than --samples {s.samples}: keep at most as many as are drawn")
    if s.temperature < 0:
        raise SlmError(f"--temperature must be 0 or more (got {s.temperature})")
    if s.samples > 1 and s.temperature == 0:
        raise SlmError("--temperature 0 gives the same reply to every sample: raise it or use --samples 1")
    if s.min_chars > s.max_chars:
        raise SlmError(f"--min-chars {s.min_chars} is above --max-chars {s.max_chars}")
    predicate(s.check)  # an unknown check fails here, before the teacher is loaded


def predicate(check: str) -> Callable[[Task, Item, str], bool] | None:
    """The check a reply must pass: None for none; the task's judgement; a regex; an importable predicate."""
    if check == "none":
        return None
    if check == "task":
        return judge
    if check.startswith("regex:"):
        try:
            pattern = re.compile(check[len("regex:") :])
        except re.error as e:
            raise SlmError(f"--check {check!r}: not a valid regular expression ({e})") from None
        return lambda task, item, text: pattern.search(text) is not None
    module, _, name = check.partition(":")
    if not module or not name:
        raise SlmError(f"--check {check!r}: give task, none, regex:PATTERN or module:function")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise SlmError(f"--check {check!r}: cannot import it ({e})") from None
    return lambda task, item, text: bool(fn({**(item.row or {}), "answer": item.answer}, text))


@functools.lru_cache(maxsize=1)
def teacher(source: str) -> Loaded:
    """Loaded once per process: the parts of a run share it."""
    return load_model(source)


def render(template: str | None, item: Item) -> str:
    if template is None:
        return item.prompt
    try:
        return template.format_map({**(item.row or {}), "prompt": item.prompt})
    except (KeyError, ValueError, IndexError) as e:
        raise SlmError(f"--template {template!r}: cannot fill it from the item ({type(e).__name__}: {e})") from None


def synth_part(settings: dict[str, Any], out: str, part: int) -> dict:
    """One part of the prompts: generated, filtered, judged; its folder (conversations, signatures, funnel)
    appears whole once it is done, which is what a rerun looks for."""
    s = SynthSettings(**settings)
    task = load_task(s.task, s.limit)
    items = list(enumerate(task.items))[part * s.part_size : (part + 1) * s.part_size]
    loaded = teacher(s.teacher)
    tok = loaded.tokenizer
    chat = chat_format(tok, loaded.chat_template, None, loaded.config.tokenizer.eos_token) if task.spec.chat else None
    check = predicate(s.check)
    funnel = Funnel()
    params = [
        SamplingParams(
            max_tokens=s.max_tokens or task.spec.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p if s.temperature > 0 else None,
            seed=seed_for(s.seed, i, j),
            stop=task.spec.stop,
        )
        for i, _ in items
        for j in range(s.samples)
    ]
    prompts = [item_prompt(Item(render(s.template, it), [], it.answer, it.row), chat) for _, it in items]
    t0 = time.perf_counter()
    with Engine(loaded.model, tok, end_ids(tok, loaded.config.tokenizer.eos_token), max_batch=s.max_batch) as e:
        done = e.run([p for p in prompts for _ in range(s.samples)], params)
    seconds = time.perf_counter() - t0
    rows = []
    for k, (i, item) in enumerate(items):
        kept = 0
        for c in done[k * s.samples : (k + 1) * s.samples]:
            text = c.text.strip()
            if not text:
                funnel.drop("generate", "empty")
                continue
            funnel.keep("generate")
            if c.finish_reason == "length":  # cut off: a checker reading its last line could pass half a reply
                funnel.drop("length", "truncated")
                continue
            if len(text) < s.min_chars or len(text) > s.max_chars:
                funnel.drop("length", "too_short" if len(text) < s.min_chars else "too_long")
                continue
            funnel.keep("length")
            if check is not None:
                try:
                    ok = check(task, item, text)
                except Exception as err:  # a user's predicate may raise anything: count it, name the item
                    funnel.drop("check", "checker_error")
                    funnel.error(f"{task.path} item {i + 1}: the check raised {type(err).__name__}: {err}")
                    continue
                if not ok:
                    stated = s.check != "task" or has_answer(task, text)
                    funnel.drop("check", "wrong" if stated else "no_answer")
                    continue
            funnel.keep("check")
            if kept >= s.keep:
                funnel.drop("keep", "surplus")
                continue
            funnel.keep("keep")
            kept += 1
            messages = [{"role": "user", "content": item.prompt}, {"role": "assistant", "content": text}]
            rows.append({"messages": messages, "source": {"task": task.spec.name, "item": i + 1}})
    signer = Signer(DedupConfig())
    replies = [r["messages"][1]["content"] for r in rows]
    record = {
        "funnel": funnel.as_dict(),
        "rows": len(rows),
        "generated_tokens": sum(len(c.tokens) for c in done),
        "seconds": seconds,
    }
    with atomic_dir(part_dir(Path(out), part)) as tmp:
        np.save(tmp / "exact.npy", np.array([signer.exact(t) for t in replies], dtype=np.uint64))
        bands = [signer.bands(t) for t in replies]
        np.save(tmp / "bands.npy", np.stack(bands) if bands else np.zeros((0, signer.cfg.bands), np.uint64))
        (tmp / "train.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
        (tmp / "part.json").write_text(json.dumps(record) + "\n")
    return record


def part_dir(out: Path, part: int) -> Path:
    return out / "parts" / f"part-{part:05d}"


def synthesize(
    settings: SynthSettings,
    out: Path,
    force: bool = False,
    on_part: Callable[[int, int], None] | None = None,
) -> dict:
    """Every part (resuming a killed run on the same settings), then train.jsonl and summary.json."""
    validate(settings)
    # refused now (unknown task, bad file, not a generate task), before any model loads
    task = load_generate_task(settings.task, "--task", "synth", settings.limit)
    if settings.template is not None:
        render(settings.template, task.items[0])
    record = out / "synth.json"
    mine = asdict(settings)
    if out.exists() and not force:
        if not record.is_file():
            refuse_existing(out, force)
        theirs = json.loads(record.read_text())
        if theirs != mine:
            diff = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise SlmError(
                f"{out} holds a synth run with other settings ({', '.join(diff)}); pass --force to start over "
                "or choose another --out"
            )
    elif out.exists():
        shutil.rmtree(out)
    teacher(settings.teacher)  # a teacher that cannot be loaded is refused before anything is written
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(mine, indent=2) + "\n")
    parts = (len(task.items) + settings.part_size - 1) // settings.part_size
    failures: list[str] = []

    def done(i: int, outcome: Outcome) -> None:
        if not outcome.ok:
            failures.append(f"part {i}: {outcome.reason}")
        if on_part:
            on_part(i, parts)

    run_jobs(synth_part, [(mine, str(out), i) for i in range(parts)], 1, done, lambda i: part_dir(out, i).is_dir())
    if failures:
        raise SlmError(f"{len(failures)} part(s) failed, first: {failures[0]}; rerun the command to retry them")
    return merge(out, parts)


def merge(out: Path, parts: int) -> dict:
    """train.jsonl from the parts, less exact and near duplicates of earlier replies; the summed funnel."""
    base = [part_dir(out, i) for i in range(parts)]
    records = [json.loads((b / "part.json").read_text()) for b in base]
    funnel = Funnel()
    for r in records:
        funnel += Funnel.from_dict(r["funnel"])
    exact, near = find_duplicates(
        [b / "exact.npy" for b in base],
        [b / "bands.npy" for b in base],
        [r["rows"] for r in records],
        exact=True,
        near=True,
    )
    lines = [ln for b in base for ln in (b / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    kept = []
    for n, line in enumerate(lines):
        if exact[n]:
            funnel.drop("exact_dedup", "exact_duplicate")
            continue
        funnel.keep("exact_dedup")
        if near[n]:
            funnel.drop("near_dedup", "near_duplicate")
            continue
        funnel.keep("near_dedup")
        kept.append(line)
    atomic_write_text(out / "train.jsonl", "".join(ln + "\n" for ln in kept))
    tokens = sum(r["generated_tokens"] for r in records)
    seconds = sum(r["seconds"] for r in records)
    generated = funnel.seen["generate"]
    summary = {
        "conversations": len(kept),
        "generated": generated,
        "passed_check": funnel.kept["check"],
        "pass_rate": funnel.kept["check"] / max(generated, 1),
        "generated_tokens": tokens,
        "teacher_tokens_per_sec": tokens / max(seconds, 1e-9),
        "funnel": funnel.as_dict(),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
