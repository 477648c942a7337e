"""The sweep report: one offline HTML page, each metric against the swept field, one line per setting of
the other fields (a heat map when exactly two numeric fields are swept), and the table of every run."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from slm.report.html import CSS, html_table, svg
from slm.run import atomic_write_text
from slm.sweep.plan import is_number

# The metrics plotted when present in the runs' summaries; any other val_* figure is added after them.
METRICS = ("val_bpb", "val_loss", "train_loss", "attn_logit_max", "logit_lse_mean")
# sizes of the held-out text, not figures of the model; and perplexity, which is exp(val_loss) again
COUNTS = ("val_tokens", "val_bytes", "val_ppl")


def metrics_of(rows: list[dict]) -> list[str]:
    found = {k for r in rows for k, v in r.items() if is_number(v)}
    extra = sorted(k for k in found if k.startswith("val_") and k not in (*METRICS, *COUNTS))
    return [m for m in (*METRICS, *extra) if m in found]


def swept(fields: list[str], rows: list[dict]) -> list[str]:
    """The fields that take more than one value, numeric ones first (they make the x axis)."""
    varied = [f for f in fields if len({repr(r.get(f)) for r in rows}) > 1]
    return sorted(varied, key=lambda f: not all(is_number(r.get(f)) for r in rows))


def _log_axis(values: list[float]) -> bool:
    return min(values) > 0 and max(values) / min(values) >= 10


def _lines(rows: list[dict], x: str, others: list[str], metric: str) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    keys = sorted({tuple(repr(r.get(f)) for f in others) for r in rows})
    finite = [r[metric] for r in rows if is_number(r.get(metric)) and math.isfinite(r[metric])]
    top = max(finite) if finite else 1.0
    for i, key in enumerate(keys):
        group = sorted((r for r in rows if tuple(repr(r.get(f)) for f in others) == key), key=lambda r: r[x])
        label = ", ".join(f"{f.split('.')[-1]}={r}" for f, r in zip(others, key, strict=True)) or metric
        ok = [r for r in group if r["status"] == "ok" and is_number(r.get(metric))]
        ax.plot([r[x] for r in ok], [r[metric] for r in ok], "o-", color=f"C{i}", markersize=4, label=label)
        bad = [r for r in group if r["status"] != "ok"]
        if bad:  # runs that diverged or failed sit at the top of the plot, marked
            ax.plot([r[x] for r in bad], [top] * len(bad), "x", color=f"C{i}", markersize=9, mew=2)
    if _log_axis([r[x] for r in rows]):
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against {x} (x: diverged or failed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return svg(fig)


def _heat(rows: list[dict], x: str, y: str, metric: str) -> str:
    xs, ys = sorted({r[x] for r in rows}), sorted({r[y] for r in rows})
    grid = np.full((len(ys), len(xs)), np.nan)
    for r in rows:
        if r["status"] == "ok" and is_number(r.get(metric)):
            grid[ys.index(r[y]), xs.index(r[x])] = r[metric]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis_r")
    ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs], rotation=45)
    ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
    for (i, j), v in np.ndenumerate(grid):  # dark text on the light cells (low values in viridis_r), white on dark
        dark = not math.isnan(v) and im.norm(v) > 0.5
        ax.text(
            j, i, "x" if math.isnan(v) else f"{v:.3g}", ha="center", va="center", fontsize=7, color="w" if dark else "k"
        )
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{metric} (x: diverged, failed or not run)")
    fig.colorbar(im, ax=ax)
    return svg(fig)


def plots(result: dict, metrics: list[str]) -> list[str]:
    rows, fields = result["runs"], result["fields"]
    axes = swept(fields, rows)
    if not axes:
        return []
    numeric = [f for f in axes if all(is_number(r.get(f)) for r in rows)]
    grid_like = len(axes) == 2 and len(numeric) == 2 and len(rows) == len({(r[axes[0]], r[axes[1]]) for r in rows})
    out = []
    for metric in metrics:
        if grid_like:
            out.append(_heat(rows, numeric[0], numeric[1], metric))
        elif numeric:
            out.append(_lines(rows, numeric[0], [f for f in axes if f != numeric[0]], metric))
        else:  # only categorical fields: each setting is a point on a categorical axis
            labelled = [{**r, "_setting": " ".join(str(r.get(f)) for f in axes)} for r in rows]
            out.append(_bars(labelled, metric))
    return out


def _bars(rows: list[dict], metric: str) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ok = [r for r in rows if r["status"] == "ok" and is_number(r.get(metric))]
    ax.bar([r["_setting"] for r in ok], [r[metric] for r in ok], color="C0")
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.tick_params(axis="x", rotation=30)
    return svg(fig)


def _cell(v: Any) -> str:
    if is_number(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return "" if v is None else str(v)


def write_sweep_report(result: dict, path: Path, metric: str = "val_bpb") -> Path:
    """Every metric the runs have, the chosen one (any number in the runs' summaries) first."""
    rows, fields = result["runs"], result["fields"]
    found = metrics_of(rows)
    have = any(is_number(r.get(metric)) for r in rows)
    metrics = [metric, *[m for m in found if m != metric]] if have else found
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "diverged", "failed", "not run")}
    columns = ["run", *fields, "status", *metrics, "diverged_step", "reason"]
    shown = [c for c in columns if any(c in r for r in rows)]
    table = html_table(shown, [[_cell(r.get(c)) for c in shown] for r in rows])
    best = [r for r in rows if r["status"] == "ok" and is_number(r.get(metrics[0] if metrics else ""))]
    lead = ""
    if best:
        top = min(best, key=lambda r: r[metrics[0]])
        setting = ", ".join(f"{f}={top.get(f)}" for f in fields)
        lead = f"<p>lowest {html.escape(metrics[0])}: <b>{top[metrics[0]]:.4f}</b> ({html.escape(setting)})</p>"
    figures = "".join(f"<div class=plot>{p}</div>" for p in plots(result, metrics))
    parts = [
        "<h1>slm sweep</h1>",
        f"<p class=muted>{len(rows)} runs over {html.escape(', '.join(fields))} · "
        + " · ".join(f"{n} {s}" for s, n in counts.items() if n)
        + "</p>",
        lead,
        f"<div class=plots>{figures}</div>" if figures else "",
        "<h2>Runs</h2>",
        table,
    ]
    early = result.get("early_signals") or {}
    signals = {k: v for k, v in early.items() if "@" in k}
    if signals:
        parts += [
            "<h2>Early signals</h2>",
            f"<p class=muted>Spearman correlation, over the {early['runs']} finished runs, between each figure "
            f"logged part-way through training and the final {html.escape(early['target'])}: 1 ranks the runs "
            "exactly as they finish.</p>",
            html_table(["figure @ share of training", "Spearman"], [[k, f"{v:.3f}"] for k, v in signals.items()]),
        ]
    page = f"<!doctype html><html><head><meta charset=utf-8><title>slm sweep</title><style>{CSS}</style></head>"
    atomic_write_text(path, page + "<body>" + "\n".join(parts) + "</body></html>\n")
    return path
