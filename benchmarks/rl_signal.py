"""How much signal GRPO gets from a model: its sampled accuracy at each temperature, and how well the
GRPO gradients of independent batches of prompts agree.

    python benchmarks/rl_signal.py RUN TASK [--prompts 16,64] [--temperature 0.7] [--group 8]

RUN: a chat model the loader reads (e.g. the rationale model of benchmarks/reasoning.py,
/tmp/slm-reasoning/run-s0-rationale); TASK: its training problems as a task file (problems.yaml of
`slm data tasks`). Accuracy: 64 problems x 4 samples per temperature, judged by the task's checker.
Agreement: three disjoint batches of P prompts x group samples, the GRPO loss (rl/grpo.py, ratio 1) of each
backpropagated through the model, and the cosine between each pair of the three flattened gradients;
near 0 means a step follows the batch's noise more than anything the batches share.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from generation import cpu_name  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("task")
    ap.add_argument("--prompts", default="16,64")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--group", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    from slm.config import RlConfig, SamplingParams
    from slm.eval.harness import item_prompt, judge
    from slm.eval.tasks import load_task
    from slm.infer.engine import Engine
    from slm.infer.template import chat_format
    from slm.model.load import load_model
    from slm.rl.grpo import grpo_loss
    from slm.rl.rollouts import Tally, completion_logprobs, roll_out
    from slm.tokenizer import end_ids

    loaded = load_model(args.run)
    model, tok = loaded.model, loaded.tokenizer
    task = load_task(args.task)
    chat = chat_format(tok, loaded.chat_template, None, loaded.config.tokenizer.eos_token)
    stops = end_ids(tok, loaded.config.tokenizer.eos_token)
    items = task.items[:64]
    prompts = [item_prompt(it, chat) for it in items]
    out: dict[str, object] = {"cpu": cpu_name(), "run": args.run, "sampled_accuracy": {}}
    for t in (0.0, 0.3, 0.5, 0.7, 1.0):
        params = [SamplingParams(max_tokens=task.spec.max_new_tokens, temperature=t, seed=i) for i in range(4 * 64)]
        with Engine(model, tok, stops, max_batch=64) as engine:
            done = engine.run([p for p in prompts for _ in range(4)], params)
        acc = sum(judge(task, items[i // 4], c.text) for i, c in enumerate(done)) / len(done)
        out["sampled_accuracy"][str(t)] = round(acc, 4)
        print(f"temperature {t}: {acc:.3f} right", flush=True)
    rl = RlConfig(task=args.task, temperature=args.temperature, group=args.group, max_batch=128)
    for p in (int(x) for x in args.prompts.split(",")):
        grads = []
        for b in range(3):
            ro = roll_out(model, tok, task, list(range(b * p, (b + 1) * p)), chat, stops, rl, (0, b, 0), Tally())
            model.train()
            model.zero_grad()
            logp, _ = completion_logprobs(model, model, ro, rl.temperature)
            grpo_loss(logp, logp.detach(), ro.advantages, ro.loss_mask).loss.backward()
            grads.append(torch.cat([q.grad.flatten() for q in model.parameters() if q.grad is not None]).clone())
        cos = [float(a @ b / (a.norm() * b.norm())) for a, b in itertools.combinations(grads, 2)]
        out[f"gradient_cosines_{p}_prompts"] = [round(c, 3) for c in cos]
        print(f"{p} prompts x {args.group}: cosines between independent batches {[round(c, 3) for c in cos]}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
