"""Causal attention's forward and backward on a CPU, three ways, at the training shape of the throughput
comparison with nanoGPT (batch 16, 4 heads, sequence 256, head dimension 32, float32):

    python benchmarks/attention_kernels.py [--rounds 7] [--threads 2] [--batch 16 --heads 4 --seq 256 --dim 32]

`flash`: `F.scaled_dot_product_attention(is_causal=True)`, which picks PyTorch's CPU flash kernel (what
`slm train` and nanoGPT both run); `math`: the same call restricted to SDPA's math backend; `manual`: the
scores, mask, softmax and product written out. Each round times 5 forwards and backwards of each way,
alternated; prints the median milliseconds and the ratio to flash, then one JSON line. The question it
answers (issue 18): whether attention written another way would make a float32 step faster at this
small shape.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from generation import cpu_flags, cpu_name
from torch.nn.attention import SDPBackend, sdpa_kernel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dim", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (args.batch, args.heads, args.seq, args.dim)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape)
    causal = torch.ones(args.seq, args.seq, dtype=torch.bool).tril()

    def flash() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def math() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def manual() -> torch.Tensor:
        scores = (q @ k.transpose(-1, -2)) * args.dim**-0.5
        return scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v

    ways = {"flash": flash, "math": math, "manual": manual}
    with torch.no_grad():
        ref = flash()
        for name, f in ways.items():  # the same function, or the timing means nothing
            if not torch.allclose(f(), ref, atol=1e-5):
                raise SystemExit(f"{name} differs from flash")
    print(f"{cpu_name()} ({', '.join(cpu_flags())}), {args.threads} threads, shape {shape}, float32", flush=True)
    times: dict[str, list[float]] = {n: [] for n in ways}
    for _ in range(args.rounds):
        for name, f in ways.items():
            t = time.perf_counter()
            for _ in range(5):
                f().backward(grad)
                q.grad = k.grad = v.grad = None
            times[name].append((time.perf_counter() - t) / 5 * 1000)
    med = {n: statistics.median(t) for n, t in times.items()}
    for n, ms in med.items():
        print(f"{n:7s} {ms:7.2f} ms forward and backward  ({ms / med['flash']:.2f}x flash)")
    out = {"bench": "attention_kernels", "cpu": cpu_name(), "cpu_flags": cpu_flags(), "shape": list(shape)}
    out.update({f"{n}_ms": round(ms, 2) for n, ms in med.items()})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
