"""Mixture search on the built-in corpus: fit quality, the choice at a larger scale, sweep concurrency.

    python benchmarks/mix.py sweep --work /tmp/mix          # corpus + `slm mix run recipes/mix-builtin.toml`
    python benchmarks/mix.py validate --work /tmp/mix       # `slm mix validate` at a larger scale
    python benchmarks/mix.py concurrency --work /tmp/mix    # 4 proxies one after another vs 2 at a time

sweep        Builds the corpus (`slm data builtin`, vocabulary 4096), then runs the recipe's sweep (proxies of
             2 layers, d_model 64, 150 steps of 16 x 128 tokens; target: mean bits-per-byte on the held-out
             drama and docs text). Prints wall-clock of the whole demo and the held-out correlations.
validate     Retrains the chosen, natural, uniform and 4 proxies' mixtures with 4 layers, d_model 128 and 400
             steps (~8x the proxies' non-embedding parameters, 2.7x their tokens); decision accuracy over pairs.
concurrency  The same 4 proxies trained with mix.jobs=1 (2 threads each) and mix.jobs=2 (1 thread each);
             ratio of total tokens/s, and its ceiling 2 / (one proxy's speed-up from 1 to 2 threads).

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def slm(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "slm", *args], capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"slm {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return p.stdout


def sweep(work: Path, proxies: int) -> None:
    t0 = time.perf_counter()
    if not (work / "corpus" / "manifest.json").exists():
        slm("data", "builtin", "-o", str(work / "corpus"), "--vocab-size", "4096")
    slm(
        "mix",
        "run",
        str(REPO / "recipes" / "mix-builtin.toml"),
        "--out",
        str(work / "sweep"),
        "--set",
        f"data.shards='{work / 'corpus'}'",
        "--set",
        f"mix.proxies={proxies}",
    )
    r = json.loads((work / "sweep" / "results.json").read_text())
    ok = [p for p in r["proxies"] if p["status"] == "ok"]
    print(
        json.dumps(
            {
                "summary": "sweep",
                "proxies": len(r["proxies"]),
                "finished": len(ok),
                "held_out": r["fit"]["held_out_proxies"],
                "correlation": r["fit"]["correlation"],
                "chosen": {k: round(v, 3) for k, v in r["chosen"].items()},
                "predicted": {k: round(v, 4) for k, v in r["predicted_target"].items()},
                "demo_seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


def validate(work: Path) -> None:
    t0 = time.perf_counter()
    slm(
        "mix",
        "validate",
        str(work / "sweep"),
        "--set",
        "model.n_layer=4",
        "--set",
        "model.n_head=4",
        "--set",
        "model.d_model=128",
        "--set",
        "train.max_steps=400",
        "--proxies",
        "4",
    )
    v = json.loads((work / "sweep" / "validate.json").read_text())
    rows = {r["mixture"]: [round(r["proxy_scale"], 4), round(r["target_scale"], 4)] for r in v["mixtures"]}
    print(
        json.dumps(
            {
                "summary": "validate",
                "proxy_vs_target_scale_bpb": rows,
                "decision_accuracy": round(v["decision_accuracy"], 3),
                "pairs": v["pairs"],
                "chosen_beats_natural": v["chosen_beats_natural"],
                "chosen_beats_uniform": v["chosen_beats_uniform"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


def code_for(work: Path, folder: Path, jobs: int, proxies: int = 4, threads: int = 0) -> str:
    """A script training proxies of one fixed mixture, `jobs` at a time on `threads` (2 // jobs) each."""
    return (
        "import sys,json;from pathlib import Path;from slm.config import load_config;"
        "from slm.mix.search import proxy_config;from slm.sweep.runs import train_all;"
        f"cfg=load_config({str(REPO / 'recipes' / 'mix-builtin.toml')!r},[\"data.shards='{work / 'corpus'}'\"]);"
        "mix={'drama':0.2,'scripture':0.2,'definitions':0.15,'docs':0.2,'code':0.15,'spanish':0.1};"
        f"jobs=[(proxy_config(cfg,mix,{{'drama':1.0}},f'p{{i}}').model_dump_json(),Path({str(folder)!r})/f'p{{i}}')"
        f" for i in range({proxies})];"
        f"train_all(jobs,[str(f) for _,f in jobs],'',{jobs},{threads or 2 // jobs},None,None,lambda m: None)"
    )


def concurrency(work: Path) -> None:
    out = {}
    for jobs in (1, 2):
        folder = work / f"concurrency_{jobs}"
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        code = code_for(work, folder, jobs)
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        seconds = time.perf_counter() - t0
        tokens = sum(json.loads((folder / f"p{i}" / "summary.json").read_text())["tokens"] for i in range(4))
        out[jobs] = tokens / seconds
        print(
            json.dumps(
                {
                    "jobs": jobs,
                    "threads_each": 2 // jobs,
                    "seconds": round(seconds, 1),
                    "tokens_per_s": round(tokens / seconds),
                }
            )
        )
    # The ceiling: 2 cores give at most 2x one thread's work, and one proxy on 2 threads already gets S2x,
    # so concurrency can give at most 2 / S2. S2 from the same proxy trained alone on 1 thread.
    alone = work / "concurrency_alone"
    shutil.rmtree(alone, ignore_errors=True)
    code = code_for(work, alone, 1, proxies=1, threads=1)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    t1 = json.loads((alone / "p0" / "summary.json").read_text())["train_seconds"]
    t2 = json.loads((work / "concurrency_1" / "p0" / "summary.json").read_text())["train_seconds"]
    print(
        json.dumps(
            {
                "summary": "concurrency",
                "ratio": round(out[2] / out[1], 2),
                "two_thread_speedup_of_one_proxy": round(t1 / t2, 2),
                "ceiling": round(2 * t2 / t1, 2),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["sweep", "validate", "concurrency", "all"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/slm-mix-bench"))
    ap.add_argument("--proxies", type=int, default=32, help="sweep: the recipe default")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.part in ("sweep", "all"):
        sweep(a.work, a.proxies)
    if a.part in ("validate", "all"):
        validate(a.work)
    if a.part in ("concurrency", "all"):
        concurrency(a.work)


if __name__ == "__main__":
    main()
