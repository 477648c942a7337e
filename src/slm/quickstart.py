"""`slm quickstart`: the shipped quickstart recipe end to end — tokenizer, shards, a small model trained on
Shakespeare, samples, validation bits-per-byte and an HTML report — from any folder, on a plain install."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from slm import resources
from slm.config import load_config
from slm.report.html import write_report
from slm.run import new_run_path
from slm.train.start import start


def quickstart(sets: list[str], out: Path | None, console: Console) -> tuple[dict, Path, Path]:
    """(summary, run folder, report) of the quickstart recipe with `sets` overrides."""
    recipe = resources.recipe("quickstart")
    cfg = load_config(recipe, sets)
    run_path = new_run_path(cfg, str(out) if out else None)
    summary = start(cfg, run_path, console=console, source=str(recipe))
    return summary, run_path, write_report([run_path])
