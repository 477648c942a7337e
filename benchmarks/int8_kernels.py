"""One projection (576 x 1536, SmolLM2-135M's gate/up shape) through each of slm's CPU product paths, at the row
counts of decoding (1, 8), a small batch (64) and a prompt or scoring window (1024).

    python benchmarks/int8_kernels.py [--threads 2] [--repeat 50]

float32   the oneDNN-packed weight the engine decodes with (mkldnn._linear_pointwise)
int8 kernel   PyTorch's int8-weight kernel (aten._weight_int8pack_mm) at every row count
int8 (slm)    slm's int8 weight-only Linear: the kernel for one row, the weights expanded to float beyond
w8a8 (slm)    slm's w8a8 Linear: per-token int8 activations, torch._int_mm, rescaled (rounding included)
float16       F.linear with float16 weights and activations (`slm serve --fp16` uses it for one row only)

Medians of --repeat calls, milliseconds. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from generation import cpu_flags, cpu_name  # noqa: E402


def timed(fn, repeat: int) -> float:
    fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from slm.model.quant import int8_weights
    from slm.model.transformer import PACK_ROWS, Linear, packed_linear

    torch.manual_seed(0)
    base = Linear(576, 1536, bias=False)
    packed = torch.ops.mkldnn._reorder_linear_weight(base.weight.detach(), PACK_ROWS)
    q, s = int8_weights(base.weight)
    int8 = Linear(576, 1536, bias=False)
    int8.int8 = (q, s)
    w8a8 = Linear(576, 1536, bias=False)
    w8a8.w8a8 = (q.t(), s)
    half = base.weight.detach().to(torch.float16)
    print(f"576 x 1536 projection, {args.threads} threads, {cpu_name()} ({', '.join(cpu_flags())}); ms, median")
    result: dict[str, object] = {"cpu": cpu_name()}
    with torch.no_grad():
        for rows in (1, 8, 64, 1024):
            x = torch.randn(rows, 576)
            r = {
                "float32": timed(lambda x=x: packed_linear(x, packed), args.repeat),
                "int8_kernel": timed(
                    lambda x=x: torch.ops.aten._weight_int8pack_mm(x, q, s), max(3, args.repeat // 10)
                ),
                "int8_slm": timed(lambda x=x: int8(x), args.repeat),
                "w8a8_slm": timed(lambda x=x: w8a8(x), args.repeat),
                "float16": timed(lambda x=x: F.linear(x.half(), half), max(3, args.repeat // 10)),
            }
            print(f"{rows:5d} rows  " + "  ".join(f"{k} {v:8.3f}" for k, v in r.items()), flush=True)
            result[f"rows_{rows}"] = {k: round(v, 4) for k, v in r.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
