"""What bounds single-stream decoding on a CPU: every weight of SmolLM2-135M read once per token.

    python benchmarks/decode_bandwidth.py [--threads 2] [--repeat 7]

Random weights of SmolLM2-135M's shapes (30 layers of q, k, v, o, gate, up, down, and the 49,152 x 576 head:
538 MB in float32, far past any cache), one token's products through each of these paths:

sum             torch.sum over one float32 tensor of the same size: the memory system's read speed here
fp32 apart      the engine's path before fusion: one oneDNN-packed product per projection
fp32 fused      the engine's path now: q/k/v and gate/up as one packed product each (Transformer.pack)
fp16 mv         the same weights in float16, torch.mv (half the bytes; activations in float16 too)
int8 kernel     PyTorch's int8 weight-only kernel (aten._weight_int8pack_mm), a quarter of the bytes

Milliseconds per token (median of --repeat passes, the paths alternated pass by pass) and the bytes of the
weights over that time. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from generation import cpu_flags, cpu_name

from slm.model.quant import int8_weights
from slm.model.transformer import PACK_ROWS, packed_linear

D, FF, HEADS, KV, HEAD_DIM, LAYERS, VOCAB = 576, 1536, 9, 3, 64, 30, 49152


def shapes() -> list[dict[str, tuple[int, int]]]:
    layer = {
        "q": (HEADS * HEAD_DIM, D),
        "k": (KV * HEAD_DIM, D),
        "v": (KV * HEAD_DIM, D),
        "o": (D, HEADS * HEAD_DIM),
        "gate": (FF, D),
        "up": (FF, D),
        "down": (D, FF),
    }
    return [layer] * LAYERS


def alternated(paths: dict, repeat: int) -> dict[str, float]:
    """Median seconds of each path, the paths taking turns pass by pass (this machine's speed drifts)."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for fn in paths.values():
        fn()
    for _ in range(repeat):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layers = [{name: torch.randn(shape) * 0.02 for name, shape in layer.items()} for layer in shapes()]
    head = torch.randn(VOCAB, D) * 0.02
    weights = [w for layer in layers for w in layer.values()] + [head]
    numel = sum(w.numel() for w in weights)

    def pack(w: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(w, PACK_ROWS)  # as Transformer.pack

    x, xf = torch.randn(1, D), torch.randn(1, FF)
    paths = {}
    flat = torch.randn(numel)
    paths["sum"] = lambda: flat.sum()

    apart = [pack(w) for w in weights]
    inputs = [xf if w.size(1) == FF else x for w in weights]
    paths["fp32_apart"] = lambda: [packed_linear(a, p) for a, p in zip(inputs, apart, strict=True)]

    fused = []
    for layer in layers:
        fused += [
            (x, pack(torch.cat([layer["q"], layer["k"], layer["v"]]))),
            (x, pack(layer["o"])),
            (x, pack(torch.cat([layer["gate"], layer["up"]]))),
            (xf, pack(layer["down"])),
        ]
    fused.append((x, pack(head)))
    paths["fp32_fused"] = lambda: [packed_linear(a, p) for a, p in fused]

    half = [w.half() for w in weights]
    half_inputs = [a[0].half() for a in inputs]
    paths["fp16_mv"] = lambda: [torch.mv(w, a) for w, a in zip(half, half_inputs, strict=True)]

    int8 = [int8_weights(w) for w in weights]  # as slm's int8 weight-only Linear holds them
    paths["int8_kernel"] = lambda: [
        torch.ops.aten._weight_int8pack_mm(a, q, s) for a, (q, s) in zip(inputs, int8, strict=True)
    ]
    results = alternated(paths, args.repeat)

    bytes_of = {"sum": 4, "fp32_apart": 4, "fp32_fused": 4, "fp16_mv": 2, "int8_kernel": 1}
    out = {"bench": "decode_bandwidth", "cpu": cpu_name(), "cpu_flags": cpu_flags(), "threads": args.threads}
    out["weights_mb_fp32"] = round(numel * 4 / 1e6)
    for name, seconds in results.items():
        gbs = numel * bytes_of[name] / seconds / 1e9
        print(f"{name:12s} {seconds * 1e3:7.1f} ms per token  {gbs:5.1f} GB/s")
        out[f"{name}_ms"] = round(seconds * 1e3, 2)
        out[f"{name}_gb_per_s"] = round(gbs, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
