"""`slm mix validate SWEEP`: does the proxies' choice hold at a larger scale?

Trains the chosen, natural and uniform mixtures plus a few of the proxies' mixtures at the target scale
(the sweep's recipe with --set overrides: more layers, width, steps), and the first three at the proxy
scale too, so every mixture has a value at both scales. Reports the target metric per mixture and
DataDecide-style decision accuracy: over all pairs of mixtures, how often the proxy scale ranks the pair
the way the target scale does.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from slm.config import Config, apply_override, validate_config
from slm.errors import SlmError
from slm.executor import usable_cores
from slm.mix.search import proxy_config, target_value
from slm.run import atomic_write_text, migrate_saved_config, read_json
from slm.sweep.runs import finished, train_all


def decision_accuracy(small: list[float], large: list[float]) -> tuple[float, int]:
    pairs = list(itertools.combinations(range(len(small)), 2))
    agree = sum((small[i] < small[j]) == (large[i] < large[j]) for i, j in pairs)
    return agree / len(pairs), len(pairs)


def validate_sweep(
    sweep: Path,
    overrides: list[str],
    n_proxies: int = 4,
    jobs: int | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    results_path, recipe_path = sweep / "results.json", sweep / "config.json"
    if not results_path.is_file() or not recipe_path.is_file():
        raise SlmError(f"{sweep} is not a finished mixture sweep (no results.json); run `slm mix run` first")
    res = read_json(results_path, "rerun `slm mix run` to rewrite it")
    raw = migrate_saved_config(read_json(recipe_path, "rerun `slm mix run` to rewrite it"), sweep=True)
    small_cfg: Config = validate_config(json.loads(json.dumps(raw)), str(recipe_path))
    for o in overrides:
        apply_override(raw, o)
    large_cfg: Config = validate_config(raw, "validate --set")
    target, task = res["target"], res.get("target_task", "")
    ok = [p for p in res["proxies"] if p["status"] == "ok"]
    ranked = sorted(ok, key=lambda p: p["target"])
    picks = [ranked[round(i)] for i in np.linspace(0, len(ranked) - 1, min(n_proxies, len(ranked)))]
    mixtures = {"chosen": res["chosen"], "natural": res["natural"], "uniform": res["uniform"]}
    mixtures.update({p["proxy"]: p["mixture"] for p in picks})
    jobs_list: list[tuple[str, str, Path]] = []
    for name in mixtures:
        jobs_list.append(("large", name, sweep / "validate" / "large" / name))
        if name in ("chosen", "natural", "uniform"):
            jobs_list.append(("small", name, sweep / "validate" / "small" / name))
    jobs = jobs or 1  # larger models: one at a time with every core, unless told otherwise
    cfgs = [
        (proxy_config(large_cfg if scale == "large" else small_cfg, mixtures[name], target, name).model_dump_json(), f)
        for scale, name, f in jobs_list
    ]
    names = [f"{scale} {name}" for scale, name, _ in jobs_list]
    train_all(cfgs, names, task, jobs, max(1, usable_cores() // jobs), None, progress, log)

    def value(folder: Path) -> float | None:
        s = folder / "summary.json"
        return target_value(json.loads(s.read_text()), target, task) if finished(folder, task) else None

    table = []
    by_proxy = {p["proxy"]: p["target"] for p in ok}
    for name in mixtures:
        small = by_proxy.get(name, value(sweep / "validate" / "small" / name))
        table.append(
            {
                "mixture": name,
                "weights": mixtures[name],
                "proxy_scale": small,
                "target_scale": value(sweep / "validate" / "large" / name),
            }
        )
    both = [r for r in table if r["proxy_scale"] is not None and r["target_scale"] is not None]
    acc, pairs = decision_accuracy([r["proxy_scale"] for r in both], [r["target_scale"] for r in both])
    large = {r["mixture"]: r["target_scale"] for r in table}
    out = {
        "target": target,
        "target_task": task,
        "overrides": overrides,
        "mixtures": table,
        "decision_accuracy": acc,
        "pairs": pairs,
        "chosen_beats_natural": large["chosen"] < large["natural"],
        "chosen_beats_uniform": large["chosen"] < large["uniform"],
    }
    atomic_write_text(sweep / "validate.json", json.dumps(out, indent=2) + "\n")
    return out
