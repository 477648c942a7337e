"""The proxy sweep: one small model per sampled mixture, trained as independent jobs (local processes,
or Ray tasks), each in its own run folder, so a killed sweep resumes without retraining finished ones."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from slm.config import Config
from slm.errors import SlmError


def target_value(summary: dict, target: dict[str, float], task: str = "") -> float:
    """The number the sweep minimises: weighted held-out bpb of the target domains, or the task's answer bpb."""
    if task:
        return summary["task"]["answer_bpb"]
    by = summary["val_bpb_by_domain"]
    total = sum(target.values())
    return sum(w * by[d] for d, w in target.items()) / total


def finished(folder: Path, task: str = "") -> bool:
    """A proxy is done when its summary is written, and holds the task's score when the target is a task."""
    s = folder / "summary.json"
    return s.exists() and (not task or "task" in json.loads(s.read_text()))


def score_task(run_path: Path, task_name: str, summary: dict) -> dict:
    """Scores the trained proxy on the target task; the summary is rewritten with it (atomically), last."""
    from slm.eval.harness import score_multiple_choice
    from slm.eval.tasks import load_task
    from slm.model.io import load_model
    from slm.run import Run

    model, tok, _, _ = load_model(run_path)
    model.eval()
    task = load_task(task_name)
    summary = {**summary, "task": {"name": task.spec.name, **score_multiple_choice(model, tok, task)}}
    Run(run_path).write_summary(summary)
    return summary


def train_proxy(cfg_json: str, folder: str, threads: int) -> dict:
    """Train one proxy; failures are recorded in its folder, not raised, so the sweep goes on."""
    from rich.console import Console

    from slm.run import Run, atomic_write_text
    from slm.train.loop import train

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    cfg = Config.model_validate_json(cfg_json)
    cfg.train.threads = threads
    run = Run(folder)
    try:
        resume = run.latest_checkpoint() is not None
        with open(os.devnull, "w") as quiet:
            summary = train(cfg, run, resume=resume, console=Console(file=quiet), progress=False)
        if cfg.mix.target_task:
            summary = score_task(run.path, cfg.mix.target_task, summary)
        return {"ok": True, "summary": summary}
    except Exception as e:  # a proxy that diverges or crashes is data for the report, not the end of the sweep
        reason = f"{type(e).__name__}: {e}"
        atomic_write_text(run.path / "failed.json", json.dumps({"reason": reason, "trace": traceback.format_exc()}))
        return {"ok": False, "reason": reason}


def tracker(
    total: int,
    pending: int,
    names: list[str],
    progress: Callable[[int, int], None] | None,
    log: Callable[[str], None],
) -> Callable[[int, dict], None]:
    """The `done` callback of run_sweep: advances the progress bar and reports failures by name."""
    finished = total - pending
    if progress:
        progress(finished, total)

    def done(i: int, res: dict) -> None:
        nonlocal finished
        finished += 1
        if progress:
            progress(finished, total)
        if not res["ok"]:
            log(f"{names[i]} failed: {res['reason']}")

    return done


def _worker_init(threads: int) -> None:
    # Set before torch is first imported in this worker, so its thread pools are sized once.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


DIED = "the worker process died (killed, out of memory or crashed)"


def _pool_run(
    jobs_cfg: list[tuple[str, Path]],
    jobs: int,
    threads: int,
    done: Callable[[int, dict], None],
    fn: Callable[[str, str, int], dict] = train_proxy,
) -> None:
    """Long-lived workers (one torch import per worker, not per proxy), at most `jobs` proxies in flight. A dead
    worker breaks the whole pool; the proxies in flight then run again one at a time, so a second death names
    its proxy, which is recorded as failed. A proxy that had checkpointed resumes rather than restarts."""
    queue = list(range(len(jobs_cfg)))
    ctx = mp.get_context("spawn")
    while queue:
        width = max(jobs, 1)
        suspects: list[int] = []
        with ProcessPoolExecutor(width, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as pool:
            running: dict[Future, int] = {}
            while running or (queue and not suspects):
                while queue and len(running) < width and not suspects:
                    i = queue.pop(0)
                    running[pool.submit(fn, jobs_cfg[i][0], str(jobs_cfg[i][1]), threads)] = i
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = running.pop(fut)
                    try:
                        done(i, fut.result())
                    except BrokenProcessPool:
                        suspects.append(i)
        if suspects and jobs <= 1:  # a pool of one: the death is this proxy's
            done(suspects[0], {"ok": False, "reason": DIED})
        else:
            for i in sorted(suspects):
                _pool_run([jobs_cfg[i]], 1, threads, lambda _, res, i=i: done(i, res), fn)


def run_sweep(
    jobs_cfg: list[tuple[str, Path]],
    jobs: int,
    threads: int,
    ray_address: str | None,
    done: Callable[[int, dict], None],
    gpus: float = 0.0,
) -> None:
    """jobs_cfg: (config JSON, run folder) per pending proxy."""
    if ray_address:
        try:
            import ray
        except ImportError:
            raise SlmError("mix.ray_address is set but Ray is not installed: pip install 'slm[cluster]'") from None
        ray.init(
            address=None if ray_address == "local" else ray_address,
            ignore_reinit_error=True,
            log_to_driver=False,
            include_dashboard=False,
        )
        remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(train_proxy)
        futures = {remote.remote(c, str(f), threads): i for i, (c, f) in enumerate(jobs_cfg)}
        while futures:
            ready, _ = ray.wait(list(futures), num_returns=1)
            for r in ready:
                i = futures.pop(r)
                try:
                    res = ray.get(r)
                except ray.exceptions.RayError as e:  # the task's process died: record it like any failure
                    res = {"ok": False, "reason": f"{DIED}: {type(e).__name__}"}
                done(i, res)
        return
    if jobs <= 1:
        for i, (c, f) in enumerate(jobs_cfg):
            done(i, train_proxy(c, str(f), threads))
        return
    _pool_run(jobs_cfg, jobs, threads, done)
