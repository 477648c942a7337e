"""Starting or resuming a training run from a command: which objective a recipe belongs to, and the checks
that keep a finished run from being overwritten by accident."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from slm.config import Config
from slm.errors import SlmError
from slm.run import Run
from slm.train.loop import train
from slm.train.objective import Objective


def check_recipe(cfg: Config, objective: Objective, source: str) -> None:
    """A recipe's optional tables say which command it is for; `slm train` never turns into another."""
    if cfg.mix is not None:
        raise SlmError(f"{source} has a [mix] table: it is a mixture-search recipe, run it with `slm mix run`")
    if cfg.distill is not None and objective.name != "distill":
        raise SlmError(f"{source} has a [distill] table: run it with `slm distill` (or remove the table to train)")
    if cfg.sft is not None and objective.name != "sft":
        raise SlmError(f"{source} has an [sft] table: run it with `slm sft`")
    if cfg.rl is not None and objective.name != "rl":
        raise SlmError(f"{source} has an [rl] table: run it with `slm rl`")


def start(
    cfg: Config,
    path: Path,
    objective: Objective | None = None,
    resume: bool = False,
    console: Console | None = None,
    source: str = "the recipe",
) -> dict:
    objective = objective or Objective(cfg)
    check_recipe(cfg, objective, source)
    run = Run(path)
    if not resume and run.latest_checkpoint() is not None:
        raise SlmError(f"{path} already holds a trained run; pass --resume {path} or choose another --out")
    console = console or Console()
    console.print(f"run folder: {path}", markup=False, highlight=False)
    return train(cfg, run, objective, resume=resume, console=console)
