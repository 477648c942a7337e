"""Learning-rate stability at small scale ("Small-scale proxies for large-scale Transformer training
instabilities", Wortsman et al.): does QK-layernorm or z-loss widen the range of learning rates that train
well, and does the largest attention logit warn of trouble?

    python benchmarks/stability.py [--quick] [--out DIR] [--steps N] [--widths 64,128,256]

One `slm sweep` of the quickstart model (recipes/quickstart.toml: 4 layers, 4 heads, sequence 256, batch
16, WSD) over 7 learning rates from 1e-4 to 1e-1 (three orders of magnitude), three widths (d_model), QK-norm
on and off, z-loss 0 and 1e-4, each run logging the stability probe (train.stability_every) every 10 steps.
--quick: width 128 only and fewer steps (under 20 minutes on a 2-core CPU).

Learning-rate sensitivity as the paper defines it: the mean over the learning rates of
min(L(lr), L0) - L*, where L is the final validation loss (nats/token), L* the best over the range and L0
the loss of the untrained model (ln of the vocabulary); a run that diverged counts as L0. Lower is more
stable. Writes OUT/stability.html and two PNGs (loss and peak attention logit against learning rate, a
panel per width) beside the sweep's own report (OUT: runs/stability unless --out; a rerun resumes), and
ends with one JSON line holding lr_sensitivity_qknorm and lr_sensitivity_plain (at width 128, no z-loss)
and every other setting's.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from generation import cpu_flags, cpu_name

REPO = Path(__file__).resolve().parents[1]
LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
VOCAB = 4096  # the quickstart tokenizer


def sensitivity(losses: list[float | None]) -> float:
    """Mean excess loss over the learning rates; None (diverged or failed) counts as the untrained loss."""
    l0 = math.log(VOCAB)
    capped = [min(v, l0) if v is not None and math.isfinite(v) else l0 for v in losses]
    return sum(capped) / len(capped) - min(capped)


def setting_name(width: int, qk: bool, z: float) -> str:
    return f"d{width}" + ("_qknorm" if qk else "_plain") + ("_zloss" if z else "")


def figure(rows: list[dict], widths: list[int], out: Path) -> None:
    from slm.report.html import CSS, svg

    panels = []
    for key, label in (
        ("val_loss", "final validation loss (nats/token)"),
        ("attn_logit_max", "largest attention logit"),
    ):
        fig, axes = plt.subplots(1, len(widths), figsize=(4.2 * len(widths), 3.6), squeeze=False, sharey=True)
        for ax, w in zip(axes[0], widths, strict=True):
            for qk, z in [(qk, z) for z in sorted({r["train.z_loss"] for r in rows}) for qk in (False, True)]:
                pts = sorted(
                    (r["train.lr"], r.get(key))
                    for r in rows
                    if r["model.d_model"] == w and r["model.qk_norm"] == qk and r["train.z_loss"] == z
                )
                if not pts:
                    continue
                ok = [(x, y) for x, y in pts if y is not None]
                style = "-" if not z else "--"
                ax.plot(
                    [x for x, _ in ok],
                    [y for _, y in ok],
                    style + "o",
                    color=f"C{int(qk)}",
                    markersize=4,
                    label=("QK-norm" if qk else "plain") + (" + z-loss" if z else ""),
                )
                bad = [x for x, y in pts if y is None]
                if bad and key == "val_loss":
                    ax.plot(bad, [math.log(VOCAB)] * len(bad), "x", color=f"C{int(qk)}", markersize=9, mew=2)
            ax.set_xscale("log")
            if key == "attn_logit_max":  # it grows by orders of magnitude without QK-norm
                ax.set_yscale("log")
            ax.set_title(f"d_model {w}")
            ax.set_xlabel("learning rate")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(label)
        axes[0][0].legend(fontsize=8)
        fig.savefig(out.parent / f"stability_{key}.png", dpi=80, bbox_inches="tight")  # for BENCHMARKS.md
        panels.append(svg(fig))
    body = "".join(f"<div class=plot>{p}</div>" for p in panels)
    page = f"<!doctype html><html><head><meta charset=utf-8><style>{CSS}</style></head><body>"
    out.write_text(page + f"<h1>Learning-rate stability</h1><p class=muted>x: diverged</p>{body}</body></html>\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "stability", help="sweep folder (resumable)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default 300; quick 100)")
    ap.add_argument("--widths", default=None, help="d_model values (default 64,128,256; quick 128)")
    ap.add_argument("--zloss", default="0,1e-4", help="z-loss values swept")
    args = ap.parse_args()
    steps = args.steps or (100 if args.quick else 300)
    widths = [int(w) for w in (args.widths or ("128" if args.quick else "64,128,256")).split(",")]
    out = args.out
    cmd = [sys.executable, "-m", "slm", "sweep", str(REPO / "recipes/quickstart.toml"), "--out", str(out)]
    cmd += ["--grid", "train.lr=" + ",".join(f"{v:g}" for v in LRS)]
    cmd += ["--grid", "model.d_model=" + ",".join(map(str, widths))]
    cmd += ["--grid", "model.qk_norm=false,true", "--grid", f"train.z_loss={args.zloss}"]
    warmup = max(10, steps // 10)
    for s in (
        f"train.max_steps={steps}",
        f"train.warmup_steps={warmup}",
        "train.stability_every=10",
        f"train.eval_every={steps}",
        f"train.ckpt_every={steps}",
        "sample.prompts=[]",
    ):
        cmd += ["--set", s]
    print(" ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    if p.returncode:
        sys.exit(p.stdout[-3000:] + p.stderr[-3000:])
    rows = json.loads((out / "results.json").read_text())["runs"]
    result: dict = {"bench": "stability", "cpu": cpu_name(), "cpu_flags": cpu_flags(), "steps": steps}
    zs = sorted({r["train.z_loss"] for r in rows})
    table = {}
    for w in widths:
        for qk in (False, True):
            for z in zs:
                group = sorted(
                    (
                        r
                        for r in rows
                        if r["model.d_model"] == w and r["model.qk_norm"] == qk and r["train.z_loss"] == z
                    ),
                    key=lambda r: r["train.lr"],
                )
                losses = [r.get("val_loss") if r["status"] == "ok" else None for r in group]
                name = setting_name(w, qk, z)
                table[name] = {
                    "lr_sensitivity": round(sensitivity(losses), 4),
                    "best_val_loss": round(min((v for v in losses if v is not None), default=float("nan")), 4),
                    "val_loss_by_lr": {
                        f"{r['train.lr']:g}": v and round(v, 4) for r, v in zip(group, losses, strict=True)
                    },
                    "attn_logit_max_by_lr": {
                        f"{r['train.lr']:g}": r.get("attn_logit_max") and round(r["attn_logit_max"], 1) for r in group
                    },
                    "diverged": [r["train.lr"] for r in group if r["status"] != "ok"],
                }
                print(
                    f"{name:<22} sensitivity {table[name]['lr_sensitivity']:.4f}  "
                    + "  ".join(
                        f"{k}:{v if v is None else round(v, 3)}" for k, v in table[name]["val_loss_by_lr"].items()
                    ),
                    flush=True,
                )
    ref = 128 if 128 in widths else widths[0]
    result["lr_sensitivity_plain"] = table[setting_name(ref, False, 0.0)]["lr_sensitivity"]
    result["lr_sensitivity_qknorm"] = table[setting_name(ref, True, 0.0)]["lr_sensitivity"]
    if any(zs):
        z = max(zs)
        result["lr_sensitivity_zloss"] = table[setting_name(ref, False, z)]["lr_sensitivity"]
        result["lr_sensitivity_qknorm_zloss"] = table[setting_name(ref, True, z)]["lr_sensitivity"]
    result["settings"] = table
    result["runs"] = len(rows)
    result["seconds"] = round(seconds)
    figure(rows, widths, out / "stability.html")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
