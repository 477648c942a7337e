"""`slm generate`: one prompt streamed, or a file of prompts decoded together on the engine."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slm.config import SamplingParams
from slm.errors import SlmError
from slm.infer.engine import Engine
from slm.infer.sampling import sampling_params
from slm.infer.speculative import make_drafter
from slm.infer.template import chat_format
from slm.model.load import load_model
from slm.run import atomic_write_text
from slm.tokenizer import end_ids


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """JSONL with a "prompt" per line (and optionally any sampling field of its own, e.g. "max_tokens"), or
    plain text with one prompt per line."""
    if not path.is_file():
        raise SlmError(f"prompts file {path} not found")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    jsonl = path.suffix == ".jsonl" or next((ln.lstrip().startswith("{") for ln in lines if ln.strip()), False)
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            rows.append({"prompt": line})
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SlmError(f"{path}:{n}: not valid JSON ({e.msg}); fix or remove the line") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise SlmError(f'{path}:{n}: expected an object with a "prompt" string')
        rows.append(row)
    if not rows:
        raise SlmError(f"{path} holds no prompts")
    return rows


def _params(base: dict[str, Any], stop: list[str], row: dict[str, Any] | None = None, i: int = 0) -> SamplingParams:
    fields = dict(base, stop=stop)
    if fields.get("seed") is not None:
        fields["seed"] += i
    own = {k: v for k, v in (row or {}).items() if k in SamplingParams.model_fields}
    return sampling_params(**(fields | own))


def generate_one(
    source: str,
    prompt: str,
    stop: list[str],
    params: dict[str, Any],
    on_text: Callable[[str], None] | None = None,
    truncate: bool = False,
    draft: str = "none",
    draft_tokens: int = 5,
) -> str:
    """The completion of one prompt (without the prompt), streamed to on_text as it comes. draft: speculative
    decoding's guesses ("none", "ngram" or a draft model; infer/speculative.py)."""
    p = _params(params, stop)
    loaded = load_model(source)
    stops = end_ids(loaded.tokenizer, loaded.config.tokenizer.eos_token)
    drafter = make_drafter(draft, loaded.model, draft_tokens)
    with Engine(loaded.model, loaded.tokenizer, stops, drafter=drafter) as eng:
        sid = eng.submit(prompt, p, truncate)
        for event in eng.stream():
            if on_text and event.text:
                on_text(event.text)
        return eng.result(sid).text


def generate_many(
    source: str,
    rows: list[dict[str, Any]],
    stop: list[str],
    params: dict[str, Any],
    max_batch: int = 32,
    out: Path | None = None,
    truncate: bool = False,
    chat: bool = False,
    system: str | None = None,
    draft: str = "none",
    draft_tokens: int = 5,
) -> list[dict[str, Any]]:
    """Completions of many prompts decoded together (prompt i seeded with seed + i), in prompt order; written
    to `out` as JSONL when given. With chat, each prompt is a user message (after `system`), rendered with
    the model's chat template, and the completion is the assistant's reply."""
    each = [_params(params, stop, row, i) for i, row in enumerate(rows)]  # every row checked before loading
    loaded = load_model(source)
    stops = end_ids(loaded.tokenizer, loaded.config.tokenizer.eos_token)
    prompts: list[str | list[int]] = [r["prompt"] for r in rows]
    if chat:
        fmt = chat_format(loaded.tokenizer, loaded.chat_template, None, loaded.config.tokenizer.eos_token)
        head = [{"role": "system", "content": system}] if system else []
        prompts = [fmt.prompt_ids([*head, {"role": "user", "content": p}]) for p in prompts]
    drafter = make_drafter(draft, loaded.model, draft_tokens)
    with Engine(loaded.model, loaded.tokenizer, stops, max_batch=max_batch, drafter=drafter) as eng:
        ids = [eng.submit(p, e, truncate) for p, e in zip(prompts, each, strict=True)]
        while eng.has_work:
            eng.step()
        done = [eng.result(i) for i in ids]
    result = [
        {
            **{k: v for k, v in r.items() if k not in SamplingParams.model_fields},
            "completion": c.text,
            "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": len(c.tokens),
        }
        for r, c in zip(rows, done, strict=True)
    ]
    if out is not None:
        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result))
    return result
