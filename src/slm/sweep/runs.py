"""Training runs as independent jobs (local processes, or Ray tasks), each in its own run folder, so a killed
sweep resumes without retraining finished ones. A run that raises gets failed.json with the reason; one
that diverges also records the step and the loss, because for a sweep divergence is a result."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from slm.config import Config
from slm.run import atomic_write_text


def finished(folder: Path, task: str = "") -> bool:
    """A run is done when its summary is written, and holds the task's score when a task is asked for."""
    s = folder / "summary.json"
    return s.exists() and (not task or "task" in json.loads(s.read_text()))


def failure(folder: Path) -> dict | None:
    """failed.json of a run that did not finish: its reason, and for a diverged one the step and loss."""
    f = folder / "failed.json"
    return json.loads(f.read_text()) if f.exists() else None


def score_task(run_path: Path, task_name: str, summary: dict) -> dict:
    """Scores the trained run on a multiple-choice task; the summary is rewritten with it (atomically), last."""
    from slm.eval.harness import score_multiple_choice
    from slm.eval.tasks import load_task
    from slm.model.load import load_model
    from slm.run import Run

    loaded = load_model(run_path)
    task = load_task(task_name)
    summary = {
        **summary,
        "task": {"name": task.spec.name, **score_multiple_choice(loaded.model, loaded.tokenizer, task)},
    }
    Run(run_path).write_summary(summary)
    return summary


def train_one(cfg_json: str, folder: str, threads: int, task: str = "") -> dict:
    """Train one run (and score it on the task); returns its summary. Runs in an executor worker."""
    import torch
    from rich.console import Console

    from slm.run import Run
    from slm.train.loop import TrainingDiverged, train

    torch.set_num_threads(threads)
    cfg = Config.model_validate_json(cfg_json)
    cfg.train.threads = threads
    run = Run(folder)
    summary_path = run.path / "summary.json"
    if summary_path.exists() and task:  # trained, killed before the task was scored
        summary = json.loads(summary_path.read_text())
    else:
        resume = run.latest_checkpoint() is not None
        try:
            with open(os.devnull, "w") as quiet:
                summary = train(cfg, run, resume=resume, console=Console(file=quiet), progress=False)
        except TrainingDiverged as e:
            logged = [m["loss"] for m in run.metrics() if "loss" in m]
            record = {
                "reason": f"TrainingDiverged: {e}",
                "diverged": {"step": e.step, "loss": str(e.loss), "last_logged_loss": logged[-1] if logged else None},
            }
            atomic_write_text(run.path / "failed.json", json.dumps(record) + "\n")
            raise
    if task:
        summary = score_task(run.path, task, summary)
    return summary


def train_all(
    jobs_cfg: list[tuple[str, Path]],
    names: list[str],
    task: str,
    jobs: int,
    threads: int,
    ray_address: str | None,
    progress: Callable[[int, int], None] | None,
    log: Callable[[str], None],
    gpus: float = 0.0,
) -> None:
    """jobs_cfg: (config JSON, run folder) per run. A run already finished (or failed) is not trained again;
    one that raises or whose process dies gets failed.json with the reason, and the others go on."""
    from slm.executor import run_jobs

    count = 0
    total = len(jobs_cfg)

    def done(i: int, out) -> None:
        nonlocal count
        count += 1
        if not out.ok and not out.skipped:
            folder = Path(jobs_cfg[i][1])
            if not (folder / "failed.json").exists():  # a diverged run wrote its own, with the step and loss
                atomic_write_text(folder / "failed.json", json.dumps({"reason": out.reason, "trace": out.trace}) + "\n")
            how = "diverged" if out.reason.startswith("TrainingDiverged") else "failed"
            log(f"{names[i]} {how}: {out.reason}")
        if progress:
            progress(count, total)

    if progress:
        progress(0, total)
    pending = [
        i for i, (_, f) in enumerate(jobs_cfg) if not (finished(Path(f), task) or (Path(f) / "failed.json").exists())
    ]
    if len(pending) < total:
        log(f"resuming: {total - len(pending)} of {total} already finished")
    if pending:
        log(f"training {len(pending)} models, {jobs} at a time with {threads} thread(s) each")
    run_jobs(
        train_one,
        [(c, str(f), threads, task) for c, f in jobs_cfg],
        jobs,
        done,
        finished=lambda i: i not in pending,
        threads=threads,
        ray_address=ray_address,
        gpus=gpus,
    )
