"""The run folder: one directory holding everything about a run.

RUN/
  config.toml        resolved recipe (every default filled in)
  tokenizer.json     the tokenizer the model reads
  data/              token shards made for this run (absent when the recipe names shared shards)
  metrics.jsonl      one JSON object per logged step or evaluation
  checkpoints/       step_XXXXXXX/ folders, each complete before it appears; LATEST names the newest
  samples.md         text generated from the recipe's [sample] prompts at the end of training
  summary.json       final numbers (validation bits-per-byte, tokens, wall time)
  chat_template.jinja  the model's chat template, when it has one (imported chat models)
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slm.config import Config, config_to_toml, load_recipe, read_toml
from slm.errors import SlmError


def read_json(path: Path, remedy: str) -> Any:
    """A JSON file slm wrote; damage is one line naming the file and what to do, never a traceback."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SlmError(f"{path} is missing; {remedy}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SlmError(f"{path} is damaged (not valid JSON: {e}); {remedy}") from None
    except OSError as e:
        raise SlmError(f"cannot read {path} ({e.strerror or e}); {remedy}") from None


def migrate_saved_config(raw: dict[str, Any], sweep: bool = False) -> dict[str, Any]:
    """Run folders written before names were made unique: the same settings under today's names. Only for
    files slm wrote itself; a recipe with an old name is refused with the new one (config.RENAMED)."""
    model, tok = raw.get("model") or {}, raw.setdefault("tokenizer", {})
    if "vocab_size" in model:
        vocab = model.pop("vocab_size")
        if vocab:
            tok["vocab_size"] = vocab
    for section, old, new in (
        ("distill", "top_k", "cache_top_k"),
        ("mix", "top_k", "search_top_k"),
        ("sample", "max_new_tokens", "max_tokens"),
    ):
        if old in (raw.get(section) or {}):
            raw[section][new] = raw[section].pop(old)
    distill = raw.get("distill")
    if distill is not None and not (distill.get("teacher") or distill.get("cache")):
        del raw["distill"]  # every run once carried an unused [distill] table
    if not sweep:
        raw.pop("mix", None)  # a run is never a sweep; a sweep's own recipe lives in its config.json
    return raw


def refuse_existing(out: Path, force: bool) -> None:
    """Outputs are never overwritten by accident: an existing path needs --force."""
    if out.exists() and not force:
        raise SlmError(f"{out} exists; pass --force to replace it or choose another --out")


def _remove_stale(final: Path) -> None:
    """Temporaries of `final` that a kill left behind: each writer of a path makes a fresh one, so an
    older one is never finished. (One writer per path: concurrent writers of one file are not supported.)"""
    for old in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write then rename, so a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would make run files unreadable to collaborators
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; it becomes `final` only if the block finishes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    tmp.chmod(0o755)
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Run:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples_path(self) -> Path:
        return self.path / "samples.md"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def chat_template_path(self) -> Path:
        return self.path / "chat_template.jinja"

    # config
    def save_config(self, cfg: Config) -> None:
        atomic_write_text(self.config_path, config_to_toml(cfg))

    def load_config(self, overrides: list[str] | None = None) -> Config:
        if not self.config_path.is_file():
            raise SlmError(f"{self.path} is not a run folder (no config.toml); pass a folder made by `slm train`")
        raw = migrate_saved_config(read_toml(self.config_path))
        return load_recipe(Config, self.config_path, overrides, raw=raw)  # type: ignore[return-value]

    # metrics
    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill; everything before it is intact
        return out

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop records past the checkpoint so the log reads as one uninterrupted run."""
        kept = [m for m in self.metrics() if m.get("step", 0) <= after_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(m) + "\n" for m in kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")

    # checkpoints
    def checkpoints(self) -> list[Path]:
        if not self.ckpt_dir.is_dir():
            return []
        return sorted(p for p in self.ckpt_dir.glob("step_*") if p.is_dir() and (p / "meta.json").exists())

    def latest_checkpoint(self) -> Path | None:
        pointer = self.ckpt_dir / "LATEST"
        if pointer.exists():
            cand = self.ckpt_dir / pointer.read_text().strip()
            if (cand / "meta.json").exists():
                return cand
        found = self.checkpoints()
        return found[-1] if found else None


def new_run_path(cfg: Config, out: str | None = None) -> Path:
    """`out` when given; otherwise out_dir/name, numbered when that exists already."""
    if out:
        return Path(out)
    base = Path(cfg.out_dir) / cfg.name
    if not base.exists():
        return base
    i = 2
    while (Path(cfg.out_dir) / f"{cfg.name}-{i}").exists():
        i += 1
    return Path(cfg.out_dir) / f"{cfg.name}-{i}"
