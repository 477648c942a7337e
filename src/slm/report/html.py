"""`slm report`: one self-contained HTML file per run or comparison of runs.

Plots are matplotlib SVG inlined in the page, styles are inline: the file opens offline, from e-mail or
a laptop with no network, and needs no JavaScript.
"""

from __future__ import annotations

import html
import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from slm.errors import SlmError
from slm.run import Run, atomic_write_text

CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:1100px;padding:0 1rem;color:#222}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(440px,100%),1fr));gap:1rem}
.plot{border:1px solid #eee;padding:.3rem;min-width:0}.plot svg{display:block;width:100%;height:auto}
pre{background:#f7f7f7;padding:.8rem;overflow:auto;font-size:13px}
.samples{border:1px solid #eee;padding:0 1rem;overflow-wrap:anywhere}
.samples h1,.samples h2,.samples h3{font-size:1rem;border:0;margin:1rem 0 .3rem}
.muted{color:#777}
"""


def _load(path: Path) -> dict[str, Any]:
    run = Run(path)
    if not run.config_path.is_file():
        raise SlmError(f"{path} is not a run folder (no config.toml); pass folders made by `slm train`")
    read = lambda p: p.read_text(encoding="utf-8") if p.is_file() else ""  # noqa: E731
    return {
        "name": path.name,
        "path": str(path),
        "metrics": run.metrics(),
        "summary": json.loads(read(run.summary_path) or "{}"),
        "config": read(run.config_path),
        "samples": read(run.samples_path),
        "eval": json.loads(read(path / "eval.json") or "{}"),
        "manifest": json.loads(read(run.data_dir / "manifest.json") or "{}"),
    }


def svg(fig) -> str:
    """A figure as inline SVG, byte-identical for identical data (fixed ids, no date)."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "slm"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    # matplotlib writes a fixed size in points; without it the viewBox scales the plot to its cell.
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r"<svg\1", text, count=1)


def markdown(text: str) -> str:
    """Markdown (samples.md) as HTML; raw HTML in it is shown as text, never injected."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).render(text)


def _series(r: dict, key: str) -> list[dict]:
    return [m for m in r["metrics"] if m.get(key) is not None and m[key] == m[key]]


def _plot(runs: list[dict], key: str, x: str, title: str, ylabel: str, logy: bool = False) -> str | None:
    """A line per run; None when no run has two points to join (one value is in the tables instead)."""
    if all(len(_series(r, key)) < 2 for r in runs):
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for r in runs:
        rows = _series(r, key)
        if rows:
            marker = "o" if key.startswith("val_") or len(rows) == 1 else None
            ax.plot([m[x] for m in rows], [m[key] for m in rows], marker=marker, markersize=4, label=r["name"])
    ax.set_title(title)
    ax.set_xlabel("tokens" if x == "tokens" else "step")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return svg(fig)


def _loss_plot(runs: list[dict]) -> str | None:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    drew = False
    for i, r in enumerate(runs):
        color = f"C{i}"
        tr = [m for m in r["metrics"] if "loss" in m]
        va = [m for m in r["metrics"] if "val_loss" in m]
        if tr:
            ax.plot([m["tokens"] for m in tr], [m["loss"] for m in tr], color=color, label=f"{r['name']} train")
            drew = True
        if va:
            ax.plot(
                [m["tokens"] for m in va],
                [m["val_loss"] for m in va],
                "o--",
                color=color,
                markersize=4,
                label=f"{r['name']} validation",
            )
            drew = True
    if not drew:
        plt.close(fig)
        return None
    ax.set_title("loss (nats/token)")
    ax.set_xlabel("tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return svg(fig)


def _section(title: str, plots: list[str | None]) -> str:
    """A heading and its plots in the page's grid (plots that are None, for want of data, left out)."""
    return f"<h2>{title}</h2><div class=plots>" + "".join(f"<div class=plot>{p}</div>" for p in plots if p) + "</div>"


def html_table(headers: list[str], rows: list[list[Any]]) -> str:
    """An escaped HTML table (shared by every report page)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any, spec: str = ".4f") -> str:
    return format(v, spec) if isinstance(v, int | float) else "–"


def render(runs: list[dict]) -> str:
    parts = [
        f"<h1>slm report</h1><p class=muted>{html.escape(', '.join(r['path'] for r in runs))} · "
        f"generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>"
    ]
    parts.append("<h2>Summary</h2>")
    parts.append(
        html_table(
            [
                "run",
                "val bits-per-byte",
                "val loss",
                "tokens",
                "steps",
                "train seconds",
                "parameters",
                "model TFLOP/s",
                "MFU",
            ],
            [
                [
                    r["name"],
                    _fmt(r["summary"].get("val_bpb")),
                    _fmt(r["summary"].get("val_loss")),
                    _fmt(r["summary"].get("tokens"), ","),
                    _fmt(r["summary"].get("steps"), ","),
                    _fmt(r["summary"].get("train_seconds"), ".0f"),
                    _fmt(r["summary"].get("params"), ","),
                    _fmt(r["summary"].get("tflops"), ".3g"),
                    _fmt(r["summary"].get("mfu"), ".1%"),  # where the device's peak is known (slm.train.flops)
                ]
                for r in runs
            ],
        )
    )
    plots = [
        _loss_plot(runs),
        _plot(runs, "val_bpb", "tokens", "validation bits-per-byte", "bits/byte"),
        _plot(runs, "lr", "step", "learning rate", "lr"),
        _plot(runs, "tokens_per_sec", "step", "throughput", "tokens/s"),
        _plot(runs, "grad_norm", "step", "gradient norm (before clipping)", "norm", logy=True),
        _plot(runs, "mfu", "step", "model FLOPs utilisation", "share of the device's peak"),  # None without a peak
    ]
    parts.append(_section("Training", plots))
    if plots[1] is None and any(_series(r, "val_bpb") for r in runs):
        parts.append("<p class=muted>One validation evaluation per run: its bits-per-byte is in the summary.</p>")
    # `slm rl` runs: what the rollouts earned and how far the policy moved (absent from other runs).
    rl_plots = [
        _plot(runs, "reward", "step", "mean reward of the rollouts", "reward"),
        _plot(runs, "val_accuracy", "step", "held-out accuracy (greedy)", "accuracy"),
        _plot(runs, "response_length", "step", "completion length", "tokens"),
        _plot(runs, "kl", "step", "KL to the reference", "nats/token"),
        _plot(runs, "entropy", "step", "policy entropy", "nats/token"),
        _plot(runs, "clip_fraction", "step", "clipped share of tokens", "share"),
    ]
    if any(rl_plots):
        parts.append(_section("Reinforcement learning", rl_plots))
    # train.stability_every: the early signs of instability (Wortsman et al.), absent unless turned on.
    stability = [
        _plot(runs, "attn_logit_max", "step", "largest attention logit", "logit"),
        _plot(runs, "logit_lse_mean", "step", "output logits: mean log Z", "nats"),
    ]
    if any(stability):
        parts.append(_section("Stability", stability))
    eval_rows = []
    for r in runs:
        for task, res in r["eval"].get("tasks", {}).items():
            for metric in ("acc", "acc_norm", "exact_match"):
                if metric in res:
                    eval_rows.append([r["name"], task, metric, _fmt(res[metric]), res.get("n", "")])
        for text, res in r["eval"].get("texts", {}).items():
            eval_rows.append([r["name"], Path(text).name, "bits-per-byte", _fmt(res["bpb"]), f"{res['bytes']:,} B"])
    parts.append(
        "<h2>Evaluation</h2>"
        + (
            html_table(["run", "task / text", "metric", "value", "n"], eval_rows)
            if eval_rows
            else "<p class=muted>no evaluation yet: run `slm eval RUN`</p>"
        )
    )
    parts.append("<h2>Data</h2>")
    data_rows = []
    for r in runs:
        for split, s in r["manifest"].get("splits", {}).items():
            data_rows.append(
                [r["name"], split, _fmt(s.get("documents"), ","), _fmt(s.get("tokens"), ","), _fmt(s.get("bytes"), ",")]
            )
    parts.append(
        html_table(["run", "split", "documents", "tokens", "bytes"], data_rows)
        if data_rows
        else "<p class=muted>shards outside the run folder</p>"
    )
    for r in runs:
        m = r["manifest"]
        if m:
            files = [Path(p).name for p in m.get("inputs", [])]
            held = [Path(p).name for p in m.get("val_inputs", [])]
            parts.append(
                f"<p><b>{html.escape(r['name'])}</b>: trained on {html.escape(', '.join(files))}"
                + (f"; held out {html.escape(', '.join(held))}" if held else "")
                + "</p>"
            )
    for r in runs:
        if r["samples"]:
            title = f"<h2>Samples · {html.escape(r['name'])}</h2>"
            parts.append(f"{title}<div class=samples>{markdown(r['samples'])}</div>")
    for r in runs:
        parts.append(
            f"<h2>Config · {html.escape(r['name'])}</h2><details open><summary>config.toml</summary>"
            f"<pre>{html.escape(r['config'])}</pre></details>"
        )
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>slm report</title><style>{CSS}</style>"
        f"</head><body>{''.join(parts)}</body></html>"
    )


def write_report(paths: list[str | Path], out: str | Path | None = None) -> Path:
    if not paths:
        raise SlmError("name at least one run folder")
    runs = [_load(Path(p)) for p in paths]
    target = Path(out) if out else (Path(paths[0]) / "report.html" if len(paths) == 1 else Path("report.html"))
    atomic_write_text(target, render(runs))
    return target
