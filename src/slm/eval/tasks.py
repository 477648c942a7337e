"""Task files: small YAML or JSON declarations that point at JSONL data, so users add tasks without code.

name: mmlu_subset
type: multiple_choice            # or: generate
data: data/mmlu_subset.jsonl     # relative to this file
description: "..."               # optional: put once at the top of the prompt, before any examples
prompt: "Question: {question}\\nAnswer:"
choices: choices                 # a field holding a list of strings ...
choice_prefix: " "               # ... each scored as prefix + choice after the prompt
answer: answer                   # a field holding the index of the right choice (or its text)
# generate tasks instead: answer is the expected text; answer_regex extracts it from the output
answer_regex: "(-?[0-9]+)"
checker: arithmetic              # or: a checker of slm.data.checkers judges the reply (many right answers)
chat: false                      # true: the prompt is a user message in the model's chat template
stop: ["\\n"]
max_new_tokens: 32
# few-shot: each item's prompt starts with num_fewshot solved examples (prompt + choice_prefix + answer)
num_fewshot: 0                   # default; `slm eval --num-fewshot N` overrides it
fewshot_data: data/dev.jsonl     # where examples come from (default: the task's own data, minus the item)
fewshot_group: subject           # optional: examples share this field's value with the item
fewshot_delimiter: "\\n\\n"        # after each example
source: where the data came from
license: its licence
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slm import resources
from slm.errors import SlmError

TASKS_DIR = resources.root() / "tasks"


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    type: Literal["multiple_choice", "generate"]
    data: str
    prompt: str = "{question}"
    choices: str = "choices"
    choice_prefix: str = " "
    answer: str = "answer"
    answer_regex: str | None = None
    checker: str | None = None
    chat: bool = False
    stop: list[str] = Field(default_factory=lambda: ["\n"])
    max_new_tokens: int = Field(32, ge=1)
    description: str = ""
    num_fewshot: int = Field(0, ge=0)
    fewshot_data: str | None = None
    fewshot_group: str | None = None
    fewshot_delimiter: str = "\n\n"
    source: str = ""
    license: str = ""


@dataclass
class Item:
    prompt: str
    choices: list[str]
    answer: int | str  # index for multiple choice, text for generate
    row: dict[str, Any] | None = None  # the item's record, for a checker


@dataclass
class Task:
    spec: TaskSpec
    items: list[Item]
    path: Path


def resolve_task(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    for ext in (".yaml", ".yml", ".json"):
        cand = TASKS_DIR / f"{name_or_path}{ext}"
        if cand.is_file():
            return cand
    known = sorted(q.stem for q in TASKS_DIR.glob("*.y*ml")) if TASKS_DIR.is_dir() else []
    raise SlmError(f"task '{name_or_path}' not found; pass a task file or one of: {', '.join(known)}")


def load_task(name_or_path: str, limit: int | None = None, num_fewshot: int | None = None) -> Task:
    """A task's items with their full prompts; num_fewshot overrides the file's own count."""
    path = resolve_task(name_or_path)
    try:
        raw = (
            yaml.safe_load(path.read_text(encoding="utf-8")) if path.suffix != ".json" else json.loads(path.read_text())
        )
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise SlmError(f"{path}: cannot parse task file ({str(e).splitlines()[0]})") from None
    try:
        spec = TaskSpec.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        raise SlmError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if spec.answer_regex is not None:
        try:
            re.compile(spec.answer_regex)
        except re.error as e:
            raise SlmError(
                f"{path}: answer_regex {spec.answer_regex!r} is not a valid regular expression ({e})"
            ) from None
    if spec.checker is not None:
        from slm.data.checkers import CHECKERS

        if spec.checker not in CHECKERS:
            raise SlmError(f"{path}: checker {spec.checker!r} is not one of: {', '.join(CHECKERS)}")
    if num_fewshot is not None:
        if num_fewshot < 0:
            raise SlmError(f"--num-fewshot {num_fewshot}: must be 0 or more")
        spec = spec.model_copy(update={"num_fewshot": num_fewshot})
    data = _data_file(path, spec.data, "data")
    shots_from_data = spec.num_fewshot > 0 and spec.fewshot_data is None
    rows = _read(spec, data, None if shots_from_data else limit)
    if not rows:
        raise SlmError(f"{data}: no items")
    pool: dict[str, list[tuple[dict[str, Any], Item]]] = {}
    if spec.num_fewshot:
        source = (
            rows
            if spec.fewshot_data is None
            else _read(spec, _data_file(path, spec.fewshot_data, "fewshot_data"), None)
        )
        for row, item, _ in source:
            pool.setdefault(_group(spec, row), []).append((row, item))
    items = []
    for row, item, where in rows[:limit]:
        head = _fill(spec.description, row, where, "description")
        if spec.num_fewshot:
            shots = _examples(spec, pool, row, where)
            head += "".join(_solved(spec, shot) + spec.fewshot_delimiter for shot in shots)
        items.append(Item(head + item.prompt, item.choices, item.answer, row))
    return Task(spec, items, path)


def load_generate_task(name_or_path: str, field: str, user: str, limit: int | None = None) -> Task:
    """load_task for a command that needs generated replies (RL prompts, a teacher's seeds): a multiple-choice
    task is refused, naming the field it came from and the command (`user`) that needs it."""
    task = load_task(name_or_path, limit)
    if task.spec.type != "generate":
        raise SlmError(f"{field}={name_or_path} is a {task.spec.type} task; {user} needs a generate task")
    return task


def _data_file(task: Path, name: str, field: str) -> Path:
    data = (task.parent / name).resolve()
    if not data.is_file():
        raise SlmError(f"{task}: {field} file {data} not found")
    return data


def _read(spec: TaskSpec, data: Path, limit: int | None) -> list[tuple[dict[str, Any], Item, str]]:
    rows = []
    with data.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and len(rows) >= limit:
                break
            where = f"{data}:{lineno}"
            rows.append((*_item(spec, line, where), where))
    return rows


def _fill(template: str, row: dict[str, Any], where: str, field: str) -> str:
    try:
        return template.format(**row)
    except KeyError as e:
        raise SlmError(f"{where}: field {e} used in the {field} template is missing") from None


def _examples(
    spec: TaskSpec, pool: dict[str, list[tuple[dict[str, Any], Item]]], row: dict[str, Any], where: str
) -> list[Item]:
    """The first num_fewshot examples of the item's group (or of the pool), never the item itself.

    Taking the first ones, not a random draw, gives every item of a group the same examples, as
    MMLU's 5-shot protocol does; the prompts then share one long prefix, which slm scores once.
    """
    key = spec.fewshot_group
    if key is not None and key not in row:
        raise SlmError(f"{where}: fewshot_group field '{key}' is missing")
    shots = []
    for r, item in pool.get(_group(spec, row), []):
        if len(shots) == spec.num_fewshot:
            break
        if r != row:  # an example equal to the question would give its answer away
            shots.append(item)
    if len(shots) < spec.num_fewshot:
        group = f" with {key} = {row[key]!r}" if key else ""
        raise SlmError(
            f"{where}: {spec.num_fewshot} few-shot examples asked for, but only {len(shots)} exist{group}; "
            "lower --num-fewshot or add examples to fewshot_data"
        )
    return shots


def _group(spec: TaskSpec, row: dict[str, Any]) -> str:
    return "" if spec.fewshot_group is None else json.dumps(row.get(spec.fewshot_group), sort_keys=True)


def _solved(spec: TaskSpec, item: Item) -> str:
    answer = item.choices[item.answer] if isinstance(item.answer, int) and item.choices else str(item.answer)
    return item.prompt + spec.choice_prefix + answer


def _item(spec: TaskSpec, line: str, where: str) -> tuple[dict[str, Any], Item]:
    try:
        row: dict[str, Any] = json.loads(line)
    except json.JSONDecodeError as e:
        raise SlmError(f"{where}: not valid JSON ({e.msg}); fix or remove the line") from None
    if not isinstance(row, dict):
        raise SlmError(f"{where}: expected a JSON object, got {type(row).__name__}")
    prompt = _fill(spec.prompt, row, where, "prompt")
    if spec.answer not in row:
        raise SlmError(f"{where}: answer field '{spec.answer}' is missing")
    answer = row[spec.answer]
    if spec.type == "generate":
        return row, Item(prompt, [], str(answer))
    choices = row.get(spec.choices)
    if not isinstance(choices, list) or len(choices) < 2:
        raise SlmError(f"{where}: '{spec.choices}' must be a list of at least two choices (got {choices!r})")
    choices = [str(c) for c in choices]
    if isinstance(answer, str) and not answer.isdigit():
        if answer not in choices:
            raise SlmError(f"{where}: answer {answer!r} is not one of the choices")
        answer = choices.index(answer)
    answer = int(answer)
    if not 0 <= answer < len(choices):
        raise SlmError(f"{where}: answer index {answer} is out of range for {len(choices)} choices")
    return row, Item(prompt, choices, answer)
