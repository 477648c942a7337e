"""Step-by-step distillation at toy scale: the same arithmetic problems taught as answers only, as rationales
(the program's column-by-column steps, then the answer), and as the multi-task form of "Distilling
Step-by-Step" (answer and rationale as two prefixed tasks), to a model trained from scratch.

    python benchmarks/reasoning.py [--steps 400] [--seeds 0,1] [--level 2] [--train 3000] [--test 200]

Each style: `slm data tasks arithmetic --ops + --level L --style S`, one byte-level BPE tokenizer with
ChatML marks shared by all styles (trained on every style's text), `slm sft` from scratch with packed
rows (so every style trains on the same number of tokens: steps x batch x seq_len), then `slm eval` on the
held-out test (level L) and the harder test (level L + 1), judged by the arithmetic checker. Prints a table
and ends with one JSON line: acc_answer_only, acc_rationale, acc_multitask (and _harder), means over seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from generation import cpu_flags, cpu_name  # noqa: E402

STYLES = ("answer", "rationale", "multitask")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--level", type=int, default=2)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--work", type=Path, default=Path("/tmp/slm-reasoning"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    from slm.config import load_config
    from slm.data.problem_sets import make_tasks
    from slm.eval.evaluate import evaluate
    from slm.run import Run
    from slm.sft.objective import SftObjective
    from slm.tokenizer import train_tokenizer
    from slm.train.loop import train

    print(f"arithmetic +, level {args.level}, {args.steps} steps, {cpu_name()} ({', '.join(cpu_flags())})")
    seeds = [int(s) for s in args.seeds.split(",")]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    quiet = Console(quiet=True)
    acc: dict[str, dict[str, list[float]]] = {s: {"test": [], "test_harder": []} for s in STYLES}
    for seed in seeds:
        texts = []
        for style in STYLES:
            make_tasks(
                "arithmetic", work / f"s{seed}-{style}", args.train, args.test, args.level, style, seed, "+", None, True
            )
            for line in (work / f"s{seed}-{style}/train.jsonl").read_text().splitlines():
                texts += [m["content"] for m in json.loads(line)["messages"]]
        tok = train_tokenizer(texts, vocab_size=512, chat_tokens=True)
        tok.save(str(work / f"tok{seed}.json"))
        for style in STYLES:
            data = work / f"s{seed}-{style}"
            cfg = load_config(
                None,
                [
                    f"tokenizer.path='{work / f'tok{seed}.json'}'",
                    f"sft.data=['{data / 'train.jsonl'}']",
                    "sft.template='chatml'",
                    "sft.batching='packed'",
                    "sft.val_fraction=0.02",
                    "model.n_layer=4",
                    "model.n_head=4",
                    "model.d_model=128",
                    "model.max_seq_len=256",
                    "train.seq_len=256",
                    "train.batch_size=16",
                    f"train.max_steps={args.steps}",
                    "train.lr=2e-3",
                    "train.warmup_steps=20",
                    f"train.eval_every={args.steps}",
                    f"train.ckpt_every={args.steps}",
                    f"train.seed={seed}",
                ],
            )
            run = work / f"run-s{seed}-{style}"
            t0 = time.time()
            shutil.rmtree(run, ignore_errors=True)
            train(cfg, Run(run), SftObjective(cfg), console=quiet, progress=False)
            tasks = [str(data / "test.yaml"), str(data / "test_harder.yaml")]
            r = evaluate(str(run), tasks, [], console=quiet)
            for name in ("test", "test_harder"):
                acc[style][name].append(r["tasks"][f"arithmetic_{name}"]["exact_match"])
            print(
                f"seed {seed} {style:9s} test {acc[style]['test'][-1]:.3f}  harder {acc[style]['test_harder'][-1]:.3f}"
                f"  ({time.time() - t0:.0f} s)",
                flush=True,
            )
    keys = {"answer": "acc_answer_only", "rationale": "acc_rationale", "multitask": "acc_multitask"}
    out: dict[str, object] = {"cpu": cpu_name(), "seeds": seeds, "steps": args.steps, "level": args.level}
    for style, key in keys.items():
        out[key] = round(statistics.mean(acc[style]["test"]), 4)
        out[f"{key}_harder"] = round(statistics.mean(acc[style]["test_harder"]), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
