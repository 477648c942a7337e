"""Warmup-stable-decay against cosine at equal tokens, and WSD's anytime property (MiniCPM), at small scale.

    python benchmarks/schedules.py [--steps 600] [--out runs/schedules] [--quick]

The quickstart model and data (recipes/quickstart.toml), trained --steps steps with each schedule (same
peak learning rate, warmup and floor), evaluated every tenth of the run. Then three decays branched from
the WSD run's stable phase at 20, 40 and 60% of --steps (`slm train --resume WSD --decay-at STEP`, each
decaying over the same share of its length, train.decay_fraction = 0.2), against cosine runs planned from
the start to end where each branch ends. All runs are independent jobs (sweep.runs.train_all, one per
core); OUT/report.html overlays their curves. Ends with one JSON line: every run's final validation
bits-per-byte, and for each branch the gap to the cosine run of its length (negative: the branch is better).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from generation import cpu_flags, cpu_name

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "schedules")
    ap.add_argument("--quick", action="store_true", help="200 steps")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe overrides for every run")
    args = ap.parse_args()
    os.chdir(REPO)  # the recipe's data paths are relative to the checkout
    from rich.console import Console

    from slm.config import load_config
    from slm.executor import usable_cores
    from slm.report.html import write_report
    from slm.sweep.runs import train_all
    from slm.sweep.sweep import share_data
    from slm.train.branch import branch_decay

    steps = 200 if args.quick else args.steps
    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    at = [round(steps * f) for f in (0.2, 0.4, 0.6)]
    every = max(10, steps // 10)
    common = [
        f"train.max_steps={steps}",
        f"train.eval_every={every}",
        f"train.ckpt_every={every}",
        "train.keep_checkpoints=100",
        "sample.prompts=[]",
    ]
    say = Console().print
    # the length each branch ends at: its decay is decay_fraction of that length
    ends = {s: s + round(0.2 * s / 0.8) for s in at}
    plan = {
        "wsd": ["train.schedule='wsd'"],
        "cosine": ["train.schedule='cosine'"],
        **{
            f"cosine-{e}": ["train.schedule='cosine'", f"train.max_steps={e}", f"train.eval_every={max(10, e // 10)}"]
            for e in ends.values()
        },
    }
    cfgs = {name: load_config("recipes/quickstart.toml", [*common, *extra, *args.sets]) for name, extra in plan.items()}
    share_data(list(cfgs.values()), [], out, say)
    t0 = time.perf_counter()
    train_all(
        [(c.model_dump_json(), out / name) for name, c in cfgs.items()],
        list(cfgs),
        "",
        2,
        max(1, usable_cores() // 2),
        None,
        None,
        say,
    )
    branches = {}
    for s in at:
        name = f"wsd-at-{s}"
        if not (out / name / "config.toml").exists():
            branch_decay(out / "wsd", s, out / name)
        branches[name] = branch_config(out / name)
    train_all([(c.model_dump_json(), out / n) for n, c in branches.items()], list(branches), "", 2, 1, None, None, say)
    seconds = time.perf_counter() - t0
    final = {n: json.loads((out / n / "summary.json").read_text())["val_bpb"] for n in [*cfgs, *branches]}
    gaps = {f"wsd-at-{s}": round(final[f"wsd-at-{s}"] - final[f"cosine-{ends[s]}"], 4) for s in at}
    write_report(
        [out / n for n in ["wsd", "cosine", *branches, *[f"cosine-{e}" for e in ends.values()]]], out / "report.html"
    )
    curves(out, ["wsd", "cosine", *branches, *[f"cosine-{e}" for e in ends.values()]], out / "schedules.png")
    for n, v in final.items():
        print(f"{n:<14} val_bpb {v:.4f}", flush=True)
    print(
        json.dumps(
            {
                "bench": "schedules",
                "cpu": cpu_name(),
                "cpu_flags": cpu_flags(),
                "steps": steps,
                "val_bpb": {n: round(v, 4) for n, v in final.items()},
                "wsd_minus_cosine": round(final["wsd"] - final["cosine"], 4),
                "branch_minus_cosine_of_its_length": gaps,
                "seconds": round(seconds),
            }
        )
    )


def curves(out: Path, names: list[str], png: Path) -> None:
    """Validation bits-per-byte against step for every run, one PNG (for BENCHMARKS.md)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slm.run import Run

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for name in names:
        pts = [(m["step"], m["val_bpb"]) for m in Run(out / name).metrics() if "val_bpb" in m]
        style = "-" if name in ("wsd", "cosine") else ("--" if name.startswith("wsd-at") else ":")
        color = "C0" if name.startswith("wsd") else "C1"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", markersize=3, color=color, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("validation bits-per-byte")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(png, dpi=80, bbox_inches="tight")
    plt.close(fig)


def branch_config(path: Path):
    from slm.run import Run

    return Run(path).load_config()


if __name__ == "__main__":
    main()
