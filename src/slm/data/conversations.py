"""Conversation data: JSONL (or Parquet) records in any of the layouts instruction data comes in, as lists
of messages.

    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}   OpenAI / chat
    {"instruction": "...", "input": "...", "output": "..."}                            Alpaca
    {"prompt": "...", "completion": "..."}                                             prompt-completion
    {"conversations": [{"from": "human" | "gpt" | "system", "value": "..."}, ...]}     ShareGPT

Files are JSONL, Parquet, or a JSON array of records (as ShareGPT dumps come); `hf:NAME[:SPLIT]` reads a
`datasets` builder or a local dataset folder instead.

Any record may add "system". A record that fits none of them, or breaks the messages rules (an unknown
role, empty content, no assistant turn), is skipped and named file:line; the skips are counted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from slm.data.readers import open_binary
from slm.data.text import expand_inputs
from slm.errors import SlmError

MAX_NAMED = 20  # skipped records named one by one; the rest are counted
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
Message = dict[str, str]


@dataclass
class ReadReport:
    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def skip(self, where: str, why: str) -> None:
        self.skipped[why.split(":")[0]] += 1
        if len(self.errors) < MAX_NAMED:
            self.errors.append(f"{where}: {why}")

    def as_dict(self) -> dict:
        return {"read": self.read, "skipped": dict(self.skipped), "errors": self.errors}


def to_messages(record: object) -> list[Message]:
    """One record in any supported layout, as checked messages (SlmError says what is wrong)."""
    if not isinstance(record, dict):
        raise SlmError("not a JSON object")
    system = record.get("system")
    if "messages" in record:
        msgs = record["messages"]
    elif "instruction" in record and "output" in record:
        user = record["instruction"]
        if isinstance(user, str) and isinstance(record.get("input"), str) and record["input"].strip():
            user = f"{user}\n\n{record['input']}"
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    elif "prompt" in record and "completion" in record:
        msgs = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]
    elif "conversations" in record:
        turns = record["conversations"]
        msgs = (
            [
                {"role": SHAREGPT_ROLES.get(t.get("from"), t.get("from")), "content": t.get("value")}
                if isinstance(t, dict)
                else t
                for t in turns
            ]
            if isinstance(turns, list)
            else turns
        )
    else:
        raise SlmError(
            "no 'messages', 'instruction'/'output', 'prompt'/'completion' or 'conversations' "
            f"(fields: {', '.join(map(str, record))})"
        )
    if isinstance(system, str) and system.strip() and isinstance(msgs, list):
        msgs = [{"role": "system", "content": system}, *msgs]
    return check_messages(msgs)


def _records(path: Path) -> Iterator[tuple[str, object]]:
    if path.suffix == ".json":
        try:
            records = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SlmError(f"{path} is not valid JSON ({e}); give a JSON array of records, or JSONL") from None
        if not isinstance(records, list):
            raise SlmError(f"{path} holds a JSON {type(records).__name__}, not an array of records")
        for i, row in enumerate(records):
            yield f"{path}:[{i}]", row
        return
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield f"{path}:row{i}", row
        return
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                yield f"{path}:{lineno}", None


def _dataset_records(spec: str) -> Iterator[tuple[str, object]]:
    """`hf:NAME` or `hf:NAME:SPLIT`: a `datasets` builder or a local dataset folder, streamed."""
    name, _, split = spec.removeprefix("hf:").partition(":")
    try:
        import datasets
    except ImportError:
        raise SlmError(f"{spec} needs the datasets package: pip install 'slm[interop]'") from None
    try:
        ds = datasets.load_dataset(name, split=split or "train", streaming=True)
    except Exception as e:  # offline hub lookups and bad names surface as many exception types
        raise SlmError(
            f"{spec}: cannot load the dataset ({str(e).strip().splitlines()[0] if str(e).strip() else e})"
        ) from None
    for i, row in enumerate(ds):
        yield f"{spec}[{i}]", row


def _streams(patterns: list[str]) -> Iterator[Iterator[tuple[str, object]]]:
    """Record streams in the order given: each hf: dataset, and each run of file patterns (read once each)."""
    files: list[str] = []
    for p in [*patterns, None]:
        if p is not None and not p.startswith("hf:"):
            files.append(p)
            continue
        if files:
            yield from (_records(path) for path in expand_inputs(files))
            files = []
        if p is not None:
            yield _dataset_records(p)


def read_conversations(patterns: list[str], report: ReadReport) -> list[list[Message]]:
    """Every valid conversation of the files the patterns name (or of `hf:NAME[:SPLIT]` datasets), in order."""
    out = []
    for stream in _streams(patterns):
        for where, record in stream:
            if record is None:
                report.skip(where, "invalid_json: not valid JSON")
                continue
            try:
                out.append(to_messages(record))
                report.read += 1
            except SlmError as e:
                report.skip(where, f"malformed: {e}")
    return out


def check_messages(messages: object) -> list[Message]:
    """A conversation as the OpenAI messages format has it, or SlmError saying what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise SlmError("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise SlmError(f"message {i} is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise SlmError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise SlmError(f"message {i} ({role}) has empty or missing content")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise SlmError("the conversation has no assistant turn to learn from")
    return out
