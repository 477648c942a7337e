"""`slm sweep RECIPE --grid ... [--random N --range ...]`: one recipe trained at many settings.

OUT/
  sweep.json     the recipe, the overrides and every point (a rerun checks it is the same sweep)
  shared/        tokenizer and shards made once for every run, when nothing swept changes them
  runs/rNNN/     one run folder per point (summary.json when finished, failed.json with the reason)
  results.json   one row per run: its values, status, every number of its summary, a divergence's step
  results.csv    the same table for a spreadsheet
  report.html    each metric against the swept field, one line per other setting (or a heat map)
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from slm.config import Config, read_toml
from slm.errors import SlmError
from slm.executor import usable_cores
from slm.run import Run, atomic_write_text
from slm.sweep.plan import Axis, configs, is_number, points
from slm.sweep.runs import failure, finished, train_all

# Swept fields under these change the tokenizer or the tokens, so each run then prepares its own data.
DATA_SECTIONS = ("tokenizer.", "data.")
# What the training loop's stability probe logs (model.transformer.Transformer.stability).
STABILITY = ("attn_logit_max", "logit_lse_mean", "logit_max")
EARLY = (0.1, 0.25, 0.5)  # fractions of training at which early signals are read


def plan_of(recipe: str | None, sets: list[str], axes: list[Axis], draws: int, seed: int) -> dict[str, Any]:
    """What the sweep trains, written to sweep.json: the recipe's own TOML is kept, so an edited recipe is
    another sweep, and every point's config is made from it."""
    pts = points(axes, draws, seed)
    return {
        "recipe": str(recipe) if recipe else None,
        "recipe_toml": read_toml(recipe) if recipe else {},
        "sets": list(sets),
        "axes": [asdict(a) for a in axes],
        "random": draws,
        "seed": seed,
        "points": [{"name": f"r{i:03d}", "values": p} for i, p in enumerate(pts)],
    }


def claim(out: Path, plan: dict[str, Any], force: bool) -> None:
    """OUT belongs to one sweep: another recipe, grid or seed there is refused unless --force starts over."""
    path = out / "sweep.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if old != json.loads(json.dumps(plan)):
            if not force:
                raise SlmError(
                    f"{out} holds a sweep of another recipe, grid or seed; pass --force to start it over "
                    "or choose another --out"
                )
            for name in ("runs", "shared", "results.json", "results.csv", "report.html"):
                target = out / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(plan, indent=2) + "\n")


def share_data(cfgs: list[Config], axes: list[Axis], out: Path, log: Callable[[str], None]) -> None:
    """Tokenize once for all runs when no swept field touches the tokenizer or the data."""
    if cfgs[0].data.shards or cfgs[0].train.init or any(a.field.startswith(DATA_SECTIONS) for a in axes):
        return
    from slm.train.setup import prepare_run

    shared = Run(out / "shared")
    if not (shared.data_dir / "manifest.json").exists():
        log(f"preparing the tokenizer and shards once for every run in {shared.path}")
        prepare_run(cfgs[0], shared, log)
    for c in cfgs:
        c.data.shards = str(shared.data_dir.resolve())


def run_sweep(
    recipe: str | None,
    sets: list[str],
    axes: list[Axis],
    out: Path,
    draws: int = 0,
    seed: int = 0,
    jobs: int | None = None,
    ray_address: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
    metric: str = "val_bpb",
) -> dict[str, Any]:
    if not axes:
        raise SlmError("nothing to sweep: add --grid section.field=v1,v2 or --random N with --range")
    out = Path(out).absolute()  # Ray workers may start elsewhere: every path they get is absolute
    plan = plan_of(recipe, sets, axes, draws, seed)
    names = [p["name"] for p in plan["points"]]
    # all validated before any work
    cfgs = configs(recipe, plan["recipe_toml"], sets, [p["values"] for p in plan["points"]], names)
    claim(out, plan, force)
    share_data(cfgs, axes, out, log)
    folders = [out / "runs" / n for n in names]
    cores = usable_cores()  # one run per core, as training runs one thread per core
    jobs = jobs or (len(cfgs) if ray_address else min(cores, len(cfgs)))
    threads = max(1, cores // jobs) if not ray_address else max(1, cfgs[0].train.threads or 1)
    train_all(
        [(c.model_dump_json(), f) for c, f in zip(cfgs, folders, strict=True)],
        [f"run {n}" for n in names],
        "",
        jobs,
        threads,
        ray_address,
        progress,
        log,
    )
    return collect(out, metric)


def peaks(metrics: list[dict[str, Any]]) -> dict[str, float]:
    """The largest value each stability signal reached during a run (train.stability_every > 0)."""
    return {k: max(m[k] for m in metrics if k in m) for k in STABILITY if any(k in m for m in metrics)}


def at_fraction(metrics: list[dict[str, Any]], key: str, steps: int, frac: float) -> float | None:
    """The value of key logged nearest to frac of the run's steps (within a tenth of the run), if any."""
    have = [m for m in metrics if is_number(m.get(key)) and math.isfinite(m[key]) and "step" in m]
    if not have:
        return None
    near = min(have, key=lambda m: abs(m["step"] - frac * steps))
    return near[key] if abs(near["step"] - frac * steps) <= 0.1 * steps else None


def early_signals(out: Path, rows: list[dict[str, Any]], target: str = "val_bpb") -> dict[str, Any]:
    """How well each figure logged early (10, 25, 50 % of the steps) ranks the finished runs as their final
    target does: Spearman's rho over the runs (the question of the E2LM competition)."""
    from scipy.stats import spearmanr

    ok = [r for r in rows if r["status"] == "ok" and is_number(r.get(target))]
    if len(ok) < 3:
        return {}
    logs = {r["run"]: Run(out / "runs" / r["run"]).metrics() for r in ok}
    signals: dict[str, Any] = {"target": target, "runs": len(ok)}
    # Every held-out figure the runs logged: loss and bits-per-byte, and train.eval_tasks' accuracy and
    # answer bits-per-byte where the recipe names tasks.
    logged = sorted({k for m in logs.values() for row in m for k in row if k.startswith("val_")} - {"val_tokens"})
    for key in ("loss", *logged):
        # Higher accuracy goes with lower bits-per-byte: its sign is turned, so 1 always means "ranks the
        # runs as their final target does".
        sign = -1 if "accuracy" in key else 1
        for frac in EARLY:
            got = [(at_fraction(logs[r["run"]], key, r["steps"], frac), r[target]) for r in ok]
            pairs = [(a, b) for a, b in got if a is not None]
            if len(pairs) == len(ok) and len({a for a, _ in pairs}) > 1 and len({b for _, b in pairs}) > 1:
                rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
                signals[f"{key}@{round(frac * 100)}%"] = round(sign * float(rho), 3)
    return signals


def collect(out: Path, metric: str = "val_bpb") -> dict[str, Any]:
    """results.json, results.csv and report.html (metric first: the lead line and the first plot) from the
    run folders as they are now."""
    from slm.sweep.report import write_sweep_report

    plan = json.loads((out / "sweep.json").read_text())
    rows = []
    for p in plan["points"]:
        folder = out / "runs" / p["name"]
        row: dict[str, Any] = {"run": p["name"], **p["values"]}
        if finished(folder):
            summary = json.loads((folder / "summary.json").read_text())
            row["status"] = "ok"
            row.update({k: v for k, v in summary.items() if is_number(v)})
            row.update(peaks(Run(folder).metrics()))
        elif (why := failure(folder)) is not None:
            row["status"] = "diverged" if "diverged" in why else "failed"
            if "diverged" in why:
                row["diverged_step"] = why["diverged"]["step"]
                row["last_logged_loss"] = why["diverged"]["last_logged_loss"]
            row["reason"] = why["reason"].splitlines()[0][:300]
        else:
            row["status"] = "not run"
        rows.append(row)
    fields = [a["field"] for a in plan["axes"]]
    result = {"fields": fields, "runs": rows, "early_signals": early_signals(out, rows)}
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    write_sweep_report(result, out / "report.html", metric)
    return result
