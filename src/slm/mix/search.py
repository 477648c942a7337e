"""`slm mix RECIPE`: sample mixtures, train a proxy on each, fit, search, write the chosen mixture.

OUT/
  mixtures.json     the sampled mixtures (fixed by mix.seed; a rerun checks it is the same sweep)
  proxies/pNNN/     one run folder per proxy (summary.json when finished, failed.json with the reason)
  results.json      every proxy's mixture and target value, the fit's held-out correlations, the choice
  mixture.toml      the chosen mixture as a recipe fragment: slm train RECIPE --set data.mixture=...
  report.html       predicted vs actual, chosen vs natural and uniform, each domain's effect
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tomli_w

from slm.config import Config
from slm.data.mixture import corpus_domains, natural_weights
from slm.data.shards import Shards
from slm.errors import SlmError
from slm.mix.regress import fit, min_proxies, search
from slm.mix.sample import sample_mixtures
from slm.mix.sweep import finished, run_sweep, target_value, tracker
from slm.run import atomic_write_text


def check_target(cfg: Config, corpus: Path, domains: list[str]) -> dict[str, float]:
    target = cfg.mix.target
    if cfg.mix.target_task:
        from slm.eval.tasks import load_task

        if target:
            raise SlmError("set mix.target (held-out domains) or mix.target_task, not both")
        if load_task(cfg.mix.target_task).spec.type != "multiple_choice":  # parsed now, not after the sweep
            raise SlmError(f"mix.target_task {cfg.mix.target_task} is not a multiple-choice task")
        return {}
    if not target:
        raise SlmError(
            "mix.target is empty; name the held-out domain(s) to optimise, e.g. mix.target = {drama = 1.0}, "
            "or a multiple-choice task as mix.target_task"
        )
    unknown = [d for d in target if d not in domains]
    if unknown:
        raise SlmError(f"mix.target names unknown domain(s) {', '.join(unknown)}; the corpus has {', '.join(domains)}")
    for d, w in target.items():
        if w < 0:
            raise SlmError(f"mix.target weight of '{d}' is negative ({w})")
        if Shards.open(corpus / d).manifest["splits"]["val"]["tokens"] == 0:
            raise SlmError(f"target domain '{d}' has no held-out text to measure; choose another target")
    return target


def proxy_config(cfg: Config, mixture: dict[str, float], target: dict[str, float], name: str) -> Config:
    c = cfg.model_copy(deep=True)
    c.data.mixture = mixture
    c.data.val_domains = list(target)  # empty for a task target: every domain the mixture uses
    c.name = name
    return c


def run_mix(
    cfg: Config,
    out: Path,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    if not cfg.data.shards:
        raise SlmError("slm mix needs data.shards = a corpus folder of per-domain shards (slm data builtin -o ...)")
    corpus = Path(cfg.data.shards)
    domains = corpus_domains(corpus)
    target = check_target(cfg, corpus, domains)
    need = min_proxies(len(domains))
    if cfg.mix.proxies < need:
        raise SlmError(
            f"mix.proxies={cfg.mix.proxies} is too few: the regression needs at least {need} for {len(domains)} domains"
        )
    nat = natural_weights(corpus)
    natural = np.array([nat[d] for d in domains])
    mixtures = sample_mixtures(natural, cfg.mix.proxies, cfg.mix.concentration, cfg.mix.seed)
    out.mkdir(parents=True, exist_ok=True)
    plan = {"domains": domains, "natural": natural.tolist(), "mixtures": mixtures.tolist(), "target": target}
    if cfg.mix.target_task:
        plan["target_task"] = cfg.mix.target_task
    mf = out / "mixtures.json"
    if mf.exists():
        old = json.loads(mf.read_text())
        if old != json.loads(json.dumps(plan)):
            raise SlmError(f"{out} holds a sweep with other mixtures or target; choose another --out")
    else:
        atomic_write_text(mf, json.dumps(plan, indent=2) + "\n")
    atomic_write_text(out / "config.json", cfg.model_dump_json(indent=2) + "\n")  # for slm mix validate

    folders = [out / "proxies" / f"p{i:03d}" for i in range(len(mixtures))]
    cfgs = [
        proxy_config(cfg, dict(zip(domains, m.tolist(), strict=True)), target, f"p{i:03d}")
        for i, m in enumerate(mixtures)
    ]
    task = cfg.mix.target_task
    pending = [i for i, f in enumerate(folders) if not finished(f, task) and not (f / "failed.json").exists()]
    if len(pending) < len(folders):
        log(f"resuming: {len(folders) - len(pending)} of {len(folders)} proxies already finished")
    cores = os.cpu_count() or 1
    jobs = cfg.mix.jobs or cores
    threads = max(1, cores // jobs)
    done = tracker(len(folders), len(pending), [f"proxy {folders[i].name}" for i in pending], progress, log)

    if pending:
        log(f"training {len(pending)} proxies, {jobs} at a time with {threads} thread(s) each")
        run_sweep(
            [(cfgs[i].model_dump_json(), folders[i]) for i in pending],
            jobs,
            threads,
            cfg.mix.ray_address,
            done,
            cfg.mix.gpus_per_proxy,
        )

    return analyse(cfg, out, domains, natural, mixtures, folders, target)


def analyse(cfg, out, domains, natural, mixtures, folders, target) -> dict:
    rows, ok = [], []
    for i, f in enumerate(folders):
        row = {"proxy": f.name, "mixture": dict(zip(domains, mixtures[i].tolist(), strict=True))}
        if finished(f, cfg.mix.target_task):
            s = json.loads((f / "summary.json").read_text())
            row.update(
                {
                    "status": "ok",
                    "target": target_value(s, target, cfg.mix.target_task),
                    **({"task": s["task"]} if "task" in s else {}),
                    "val_bpb_by_domain": s["val_bpb_by_domain"],
                    "train_seconds": s["train_seconds"],
                    "tokens": s["tokens"],
                }
            )
            ok.append(i)
        else:
            failed = f / "failed.json"
            reason = json.loads(failed.read_text())["reason"] if failed.exists() else "did not finish"
            row.update({"status": "failed", "reason": reason})
        rows.append(row)
    X = mixtures[ok]
    y = np.array([rows[i]["target"] for i in ok])
    f = fit(X, y, cfg.mix.holdout, cfg.mix.seed)
    chosen, pred_top, pred_chosen = search(
        f.models["lightgbm"], natural, cfg.mix.search_samples, cfg.mix.concentration, cfg.mix.top_k, cfg.mix.seed
    )
    uniform = np.full(len(domains), 1 / len(domains))
    lgbm, lin = f.models["lightgbm"], f.models["linear"]
    result = {
        "domains": domains,
        "target": target,
        "target_task": cfg.mix.target_task,
        "proxies": rows,
        "fit": {"held_out_proxies": len(f.held_out), "correlation": f.holdout},
        "predicted": f.predicted,
        "held_out": f.held_out,
        "fitted_on": ok,
        "chosen": dict(zip(domains, chosen.tolist(), strict=True)),
        "natural": dict(zip(domains, natural.tolist(), strict=True)),
        "uniform": dict(zip(domains, uniform.tolist(), strict=True)),
        "predicted_target": {
            "chosen": pred_chosen,
            "top_k_mean": pred_top,
            "natural": float(lgbm.predict(natural[None])[0]),
            "uniform": float(lgbm.predict(uniform[None])[0]),
        },
        "domain_effect": {
            "linear_coefficient": dict(zip(domains, [float(c) for c in lin.coef_], strict=True)),
            "lightgbm_importance": dict(zip(domains, [int(v) for v in lgbm.feature_importances_], strict=True)),
        },
        "search_samples": cfg.mix.search_samples,
        "top_k": cfg.mix.top_k,
    }
    atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    fragment = "# chosen by slm mix: " + ", ".join(f"{d}={w:.3f}" for d, w in result["chosen"].items()) + "\n"
    fragment += tomli_w.dumps(
        {"data": {"shards": cfg.data.shards, "mixture": {d: round(w, 6) for d, w in result["chosen"].items()}}}
    )
    atomic_write_text(out / "mixture.toml", fragment)
    from slm.mix.report import write_mix_report

    write_mix_report(result, out / "report.html")
    return result
