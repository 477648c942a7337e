"""The mixture-search report: one offline HTML file with the evidence for the chosen mixture."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from slm.report.html import CSS, html_table, svg
from slm.run import atomic_write_text


def _scatter(result: dict) -> str:
    ok = result["fitted_on"]
    y = np.array([result["proxies"][i]["target"] for i in ok])
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    held = set(result["held_out"])
    for name, marker in (("lightgbm", "o"), ("linear", "x")):
        p = np.array(result["predicted"][name])
        inside = [k for k in range(len(ok)) if k not in held]
        ax.scatter(y[inside], p[inside], marker=marker, alpha=0.35, label=f"{name}, fitted")
        ax.scatter(y[list(held)], p[list(held)], marker=marker, s=60, label=f"{name}, held out")
    lo, hi = float(min(y.min(), min(map(min, result["predicted"].values())))), float(y.max())
    ax.plot([lo, hi], [lo, hi], color="#999", lw=1)
    ax.set_xlabel("actual target bits-per-byte")
    ax.set_ylabel("predicted")
    ax.set_title("proxies: predicted vs actual")
    ax.legend(fontsize=8)
    return svg(fig)


def _bars(result: dict) -> str:
    domains = result["domains"]
    x = np.arange(len(domains))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k, (name, off) in enumerate((("natural", -0.27), ("uniform", 0.0), ("chosen", 0.27))):
        ax.bar(x + off, [result[name][d] for d in domains], width=0.27, label=name, color=f"C{k}")
    ax.set_xticks(x, domains, rotation=30)
    ax.set_ylabel("weight")
    ax.set_title("mixtures")
    ax.legend()
    return svg(fig)


def _effects(result: dict) -> str:
    domains = result["domains"]
    coef = [result["domain_effect"]["linear_coefficient"][d] for d in domains]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.bar(domains, coef, color=["C2" if c < 0 else "C3" for c in coef])
    ax.axhline(0, color="#999", lw=1)
    ax.set_ylabel("change in target bpb per unit weight")
    ax.set_title("each domain's effect (linear model; below 0 helps)")
    ax.tick_params(axis="x", rotation=30)
    return svg(fig)


def write_mix_report(result: dict, path: Path) -> Path:
    corr = result["fit"]["correlation"]
    pt = result["predicted_target"]
    rows_fit = [[m, f"{v['spearman']:.3f}", f"{v['pearson']:.3f}"] for m, v in corr.items()]
    rows_mix = [
        [name, *[f"{result[name][d]:.3f}" for d in result["domains"]], f"{pt[name]:.4f}"]
        for name in ("natural", "uniform", "chosen")
    ]
    failed = [[p["proxy"], p["reason"]] for p in result["proxies"] if p["status"] != "ok"]
    task = result.get("target_task")
    what = f"task {task} (bits-per-byte of its right answers)" if task else str(result["target"])
    parts = [
        f"<h1>slm mix</h1><p class=muted>target: {html.escape(what)} · "
        f"{len(result['fitted_on'])} proxies fitted, {len(failed)} failed · "
        f"{result['search_samples']:,} mixtures searched, top {result['search_top_k']} averaged</p>",
        "<h2>Fit on held-out proxies</h2>",
        html_table(["model", "Spearman", "Pearson"], rows_fit),
        "<h2>Chosen mixture</h2>",
        html_table(["mixture", *result["domains"], "predicted target bpb"], rows_mix),
        "<div class=plots>",
        f"<div class=plot>{_scatter(result)}</div>",
        f"<div class=plot>{_bars(result)}</div>",
        f"<div class=plot>{_effects(result)}</div>",
        "</div>",
    ]
    if failed:
        parts += ["<h2>Failed proxies</h2>", html_table(["proxy", "reason"], failed)]
    body = "\n".join(parts)
    page = f"<!doctype html><html><head><meta charset=utf-8><title>slm mix</title><style>{CSS}</style></head>"
    atomic_write_text(path, page + f"<body>{body}</body></html>\n")
    return path
