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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tomli_w

from slm.config import Config, MixConfig
from slm.data.mixture import corpus_domains, natural_weights
from slm.data.shards import Shards
from slm.errors import SlmError
from slm.executor import usable_cores
from slm.mix.regress import fit, min_proxies, search
from slm.mix.sample import sample_mixtures
from slm.run import atomic_write_text
from slm.sweep.runs import finished, train_all


def target_value(summary: dict, target: dict[str, float], task: str = "") -> float:
    """The number the sweep minimises: weighted held-out bpb of the target domains, or the task's answer bpb."""
    if task:
        return summary["task"]["answer_bpb"]
    by = summary["val_bpb_by_domain"]
    total = sum(target.values())
    return sum(w * by[d] for d, w in target.items()) / total


def mix_config(cfg: Config) -> MixConfig:
    if cfg.mix is None:
        raise SlmError("no [mix] table: name the target, e.g. --set 'mix.target={drama = 1.0}'")
    return cfg.mix


def check_target(cfg: Config, corpus: Path, domains: list[str]) -> dict[str, float]:
    mix = mix_config(cfg)
    target = mix.target
    if mix.target_task:
        from slm.eval.tasks import load_task

        if target:
            raise SlmError("set mix.target (held-out domains) or mix.target_task, not both")
        if load_task(mix.target_task).spec.type != "multiple_choice":  # parsed now, not after the sweep
            raise SlmError(f"mix.target_task {mix.target_task} is not a multiple-choice task")
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
    """A proxy is a plain training run of the sweep's [model] and [train] on one mixture."""
    c = cfg.model_copy(deep=True)
    c.data.mixture = mixture
    c.data.val_domains = list(target)  # empty for a task target: every domain the mixture uses
    c.name = name
    c.mix = None
    return c


def run_mix(
    cfg: Config,
    out: Path,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    mix = mix_config(cfg)
    if not cfg.data.shards:
        raise SlmError("slm mix needs data.shards = a corpus folder of per-domain shards (slm data builtin -o ...)")
    corpus = Path(cfg.data.shards)
    domains = corpus_domains(corpus)
    target = check_target(cfg, corpus, domains)
    need = min_proxies(len(domains))
    if mix.proxies < need:
        raise SlmError(
            f"mix.proxies={mix.proxies} is too few: the regression needs at least {need} for {len(domains)} domains"
        )
    nat = natural_weights(corpus)
    natural = np.array([nat[d] for d in domains])
    mixtures = sample_mixtures(natural, mix.proxies, mix.concentration, mix.seed)
    out.mkdir(parents=True, exist_ok=True)
    plan = {"domains": domains, "natural": natural.tolist(), "mixtures": mixtures.tolist(), "target": target}
    if mix.target_task:
        plan["target_task"] = mix.target_task
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
    task = mix.target_task
    cores = usable_cores()  # one proxy per core, as training runs one thread per core
    jobs = mix.jobs or cores
    train_all(
        [(c.model_dump_json(), f) for c, f in zip(cfgs, folders, strict=True)],
        [f"proxy {f.name}" for f in folders],
        task,
        jobs,
        max(1, cores // jobs),
        mix.ray_address,
        progress,
        log,
        mix.gpus_per_proxy,
    )

    return analyse(cfg, out, domains, natural, mixtures, folders, target)


def analyse(cfg, out, domains, natural, mixtures, folders, target) -> dict:
    mix = mix_config(cfg)
    rows, ok = [], []
    for i, f in enumerate(folders):
        row = {"proxy": f.name, "mixture": dict(zip(domains, mixtures[i].tolist(), strict=True))}
        if finished(f, mix.target_task):
            s = json.loads((f / "summary.json").read_text())
            row.update(
                {
                    "status": "ok",
                    "target": target_value(s, target, mix.target_task),
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
    f = fit(X, y, mix.holdout, mix.seed)
    chosen, pred_top, pred_chosen = search(
        f.models["lightgbm"], natural, mix.search_samples, mix.concentration, mix.search_top_k, mix.seed
    )
    uniform = np.full(len(domains), 1 / len(domains))
    lgbm, lin = f.models["lightgbm"], f.models["linear"]
    result = {
        "domains": domains,
        "target": target,
        "target_task": mix.target_task,
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
        "search_samples": mix.search_samples,
        "search_top_k": mix.search_top_k,
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
