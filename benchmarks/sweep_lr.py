"""A 16-run learning-rate sweep of the quickstart model with `slm sweep`: wall-clock and the curve.

    python benchmarks/sweep_lr.py [--runs 16] [--lo 1e-4] [--hi 1e-1] [--jobs 2] [--keep DIR] [--set k=v ...] [--early]

Runs the real command (`slm sweep recipes/quickstart.toml --grid train.lr=...`, log-spaced values, the
recipe otherwise unchanged: 520 steps, WSD) in a temporary folder, one run per core at a time. Prints the
validation bits-per-byte of every learning rate and one JSON line with the wall-clock (target: 16 runs
in under 25 minutes on a 2-core CPU), the best learning rate and the recipe's own (3e-3) rank, and the
sweep's early signals. --early evaluates every tenth of the run and scores a next-word task of Macbeth at
each evaluation (train.eval_tasks), so the signals include validation bits-per-byte, accuracy and answer
bits-per-byte at 10, 25 and 50 % of training.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from generation import cpu_flags, cpu_name, scratch

REPO = Path(__file__).resolve().parents[1]


def next_word_task(out: Path, n: int = 200) -> Path:
    """A cloze task of Macbeth (the quickstart's held-out text): the next word among four."""
    import numpy as np

    from slm.eval.cloze import make_word_items, write_cloze_task

    text = (REPO / "data/shakespeare/macbeth.txt").read_text()
    rows = make_word_items([text], n, np.random.default_rng(0))
    write_cloze_task(rows, out, "next-word items from data/shakespeare/macbeth.txt (benchmarks/sweep_lr.py)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--lo", type=float, default=1e-4)
    ap.add_argument("--hi", type=float, default=1e-1)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="sweep folder to keep (default: a temporary one)")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument(
        "--early",
        action="store_true",
        help="evaluate every tenth of the run, with a next-word task of Macbeth (train.eval_tasks), for early signals",
    )
    args = ap.parse_args()
    out = args.keep or scratch("slm-sweep-lr-") / "sweep"
    ratio = (args.hi / args.lo) ** (1 / (args.runs - 1))
    lrs = [float(f"{args.lo * ratio**i:.3g}") for i in range(args.runs)]
    if 3e-3 not in lrs:
        lrs[min(range(len(lrs)), key=lambda i: abs(lrs[i] - 3e-3))] = 3e-3  # the recipe's own value, exactly
    cmd = [sys.executable, "-m", "slm", "sweep", str(REPO / "recipes/quickstart.toml"), "--out", str(out)]
    cmd += ["--grid", "train.lr=" + ",".join(f"{v:g}" for v in lrs), "--set", "sample.prompts=[]"]
    if args.early:
        cmd += ["--set", f"train.eval_tasks=['{next_word_task(out.parent / 'macbeth_next_word.yaml')}']"]
        from slm.config import load_config

        steps = load_config(REPO / "recipes/quickstart.toml", args.sets).train.max_steps
        cmd += ["--set", f"train.eval_every={max(1, steps // 10)}"]
    for s in args.sets:
        cmd += ["--set", s]
    if args.jobs:
        cmd += ["--jobs", str(args.jobs)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    if p.returncode:
        sys.exit(p.stdout[-2000:] + p.stderr[-2000:])
    rows = json.loads((out / "results.json").read_text())["runs"]
    for r in rows:
        print(f"lr {r['train.lr']:<9g} {r['status']:<9} val_bpb {r.get('val_bpb', float('nan')):.4f}", flush=True)
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["val_bpb"])
    own = next((i + 1 for i, r in enumerate(ok) if r["train.lr"] == 3e-3), None)
    print(
        json.dumps(
            {
                "bench": "sweep_lr",
                "cpu": cpu_name(),
                "cpu_flags": cpu_flags(),
                "runs": len(rows),
                "seconds": round(seconds, 1),
                "under_25_min": seconds < 25 * 60,
                "best_lr": ok[0]["train.lr"] if ok else None,
                "best_val_bpb": round(ok[0]["val_bpb"], 4) if ok else None,
                "recipe_lr_rank": own,
                "val_bpb_by_lr": {f"{r['train.lr']:g}": r.get("val_bpb") for r in rows},
                "diverged": [r["train.lr"] for r in rows if r["status"] == "diverged"],
                "early_signals": json.loads((out / "results.json").read_text())["early_signals"],
            }
        )
    )


if __name__ == "__main__":
    main()
