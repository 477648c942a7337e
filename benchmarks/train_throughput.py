"""Training throughput at a given shape: prints one JSON line with tokens_per_sec and the shape.

    python benchmarks/train_throughput.py --n-layer 4 --n-head 4 --d-model 128 --seq-len 256 \
        --batch-size 16 --vocab-size 4096 --steps 30

The line names the CPU, its features and the dtype `auto` picks there. To measure as on a CPU with AVX2
but no AVX-512, set the variables in benchmarks/generation.py's ISA_ENV["avx2"] before the command.
Random token ids stand in for data (throughput does not depend on the text); the first --warmup steps
(at least one) are not timed, and the first is reported apart (first_step_s: it holds torch.compile's
compilation). It runs the same code path as `slm train`: the model, fused AdamW, clipping, autocast. The
line also counts the page faults of a timed step (fresh memory the C allocator got from the kernel) and the
kernel time they cost, and gives the model FLOPs a token needs, the TFLOP/s achieved and, where the device's
peak is known (a GPU in slm.train.flops's table, or --peak-tflops), the MFU. batch_ms is what drawing a step's
batch from memory-mapped shards costs apart from the step (as slm train draws it, between steps).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from generation import machine

from slm.config import Config, validate_config
from slm.executor import usable_cores
from slm.model import matmul
from slm.model.transformer import Transformer
from slm.train import memory
from slm.train.flops import flops_per_token, mfu, peak_tflops, product_flops_per_token
from slm.train.loop import autocast_for, make_optimizer
from slm.train.memory import heap_huge_pages


def setup(
    n_layer: int,
    n_head: int,
    d_model: int,
    seq_len: int,
    batch_size: int,
    vocab_size: int,
    *,
    n_kv_head: int | None = None,
    qk_norm: bool = False,
    dtype: str = "float32",
    compile: bool = False,
    device: torch.device | None = None,
) -> tuple[Transformer, torch.optim.Optimizer, torch.Tensor]:
    """The model and optimiser `slm train` would make at this shape (seed 0), and a batch of random token ids."""
    device = device or torch.device("cpu")
    torch.manual_seed(0)
    cfg: Config = validate_config(
        {
            "tokenizer": {"vocab_size": vocab_size},
            "model": {
                "n_layer": n_layer,
                "n_head": n_head,
                "n_kv_head": n_kv_head,
                "d_model": d_model,
                "max_seq_len": seq_len,
                "qk_norm": qk_norm,
            },
            "train": {"batch_size": batch_size, "dtype": dtype, "compile": compile},
        }
    )
    model = Transformer(cfg.model, vocab_size).to(device)
    opt = make_optimizer(model, cfg, device)
    x = torch.randint(0, vocab_size, (batch_size, seq_len + 1), device=device)
    return model, opt, x


def train_step(
    model: Transformer,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    autocast: Any = None,
    step_model: Callable | None = None,
) -> float:
    """One training step as `slm train` runs it (forward under autocast, backward, clipping, the optimiser);
    step_model is the model to call, if not model itself (torch.compile's wrapper). Returns the loss."""
    with autocast if autocast is not None else nullcontext():
        _, loss = (step_model if step_model is not None else model)(x[:, :-1], x[:, 1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


# The profiler's operators that multiply matrices: PyTorch's (MKL, or oneDNN for bf16) and oneDNN's own.
PRODUCT_OPS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise"}


def profile_split(prof: Any, steps: int, product_flops: float) -> dict[str, float]:
    """A profiled step's time (self time, ms a step) in the products, in attention (SDPA's kernels, forward
    and backward) and in everything else, and the rate the products ran at (product_flops a step)."""
    split = {"products_ms": 0.0, "attention_ms": 0.0, "other_ms": 0.0}
    for e in prof.key_averages():
        ms = e.self_cpu_time_total / 1e3 / steps
        if e.key in PRODUCT_OPS:
            split["products_ms"] += ms
        elif "scaled_dot_product" in e.key:
            split["attention_ms"] += ms
        else:
            split["other_ms"] += ms
    out = {k: round(v, 1) for k, v in split.items()}
    out["products_gflops"] = round(product_flops / split["products_ms"] / 1e6, 1) if split["products_ms"] else None
    return out


def square_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 7) -> dict[str, float]:
    """GFLOP/s of an n x n x n product on the CPU, by MKL (torch.mm) and, in float32, oneDNN: what the step's
    products could reach at a shape that suits the kernels (median of reps)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    ways = {"torch_mm": lambda: torch.mm(a, b)}
    if matmul.onednn_available(a.device, dtype):
        ways["onednn"] = lambda: matmul.onednn_product(a, b)
    out = {}
    for name, f in ways.items():
        f()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        out[name] = round(2 * n**3 / sorted(times)[reps // 2] / 1e9, 1)
    return out


def batch_ms(seq_len: int, batch_size: int, vocab: int, draws: int = 200) -> float:
    """Milliseconds to draw one training batch as slm train does (Batcher over a memory-mapped token file, the
    form `slm prepare` writes), from a file of 4M random token ids: what overlapping data loading with the step
    could at most save."""
    import tempfile

    import numpy as np

    from slm.data.shards import Batcher, token_dtype

    dtype = token_dtype(vocab)  # uint16, or uint32 past 65,536 entries, as slm prepare writes them
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        np.random.default_rng(0).integers(0, vocab, 4 << 20, dtype=dtype).tofile(f.name)
        batcher = Batcher(np.memmap(f.name, dtype=dtype, mode="r"), seq_len, batch_size, seed=0)
        batcher.batch(0, 0)
        t0 = time.perf_counter()
        for i in range(draws):
            batcher.batch(i + 1, 0)
        return (time.perf_counter() - t0) / draws * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-kv-head", type=int, default=None)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "auto"], default="float32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--qk-norm", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense peak TFLOP/s for MFU (default: slm.train.flops's table of GPUs; none on a CPU)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also print torch.profiler's top operators over 5 steps, by kind and by input shape, and a step's "
        "time in products, attention and the rest, with the products' GFLOP/s against a 2,048-square product's",
    )
    ap.add_argument(
        "--no-onednn",
        action="store_true",
        help="float32 CPU products all in MKL, as before slm.model.matmul (benchmarks/cpu_kernels.py compares)",
    )
    ap.add_argument(
        "--no-malloc", action="store_true", help="leave glibc's allocator as it is (slm.train.memory not applied)"
    )
    ap.add_argument(
        "--mmap-threshold-mb",
        type=int,
        default=None,
        help="glibc's mmap threshold for the allocator setting, in MB (default: what slm train sets for "
        "fixed-shape objectives, slm.train.memory.MMAP_THRESHOLD_FIXED_SHAPES)",
    )
    ap.add_argument(
        "--no-huge-pages",
        action="store_true",
        help="leave the heap in 4 KB pages (no slm.train.memory.heap_huge_pages)",
    )
    args = ap.parse_args()

    torch.set_num_threads(args.threads or usable_cores())  # as slm train does
    if args.no_onednn:
        matmul.ONEDNN_MAX_INNER = 0
    threshold = memory.MMAP_THRESHOLD_FIXED_SHAPES  # as slm train sets it for pretraining's one batch shape
    if args.mmap_threshold_mb is not None:
        if not 1 <= args.mmap_threshold_mb <= 2047:  # mallopt takes an int of bytes, and refuses others silently
            sys.exit(f"--mmap-threshold-mb {args.mmap_threshold_mb}: give 1 to 2047 (MB)")
        threshold = args.mmap_threshold_mb << 20
    if args.device == "cpu" and not args.no_malloc:
        memory.reuse_freed_memory(threshold)  # as slm train does on a CPU
    device = torch.device(args.device)
    model, opt, x = setup(
        args.n_layer,
        args.n_head,
        args.d_model,
        args.seq_len,
        args.batch_size,
        args.vocab_size,
        n_kv_head=args.n_kv_head,
        qk_norm=args.qk_norm,
        dtype=args.dtype,
        compile=args.compile,
        device=device,
    )
    autocast, dtype = autocast_for(args.dtype, device)
    step_model = torch.compile(model) if args.compile else model

    def step() -> float:
        return train_step(model, opt, x, autocast, step_model)

    t0 = time.perf_counter()
    step()  # the first step holds torch.compile's compilation, reported apart
    first_step = time.perf_counter() - t0
    huge, t0 = 0, time.perf_counter()
    if args.device == "cpu" and not args.no_malloc and not args.no_huge_pages:
        huge = heap_huge_pages()  # as slm train does after its first step on a CPU
    huge_s = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        step()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(5):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
        # The same operators by input shape: which product or elementwise kernel is slow, not just which kind.
        by_shape = prof.key_averages(group_by_input_shape=True)
        print(by_shape.table(sort_by="self_cpu_time_total", row_limit=20, max_shapes_column_width=60))
        if args.device == "cpu":  # on a GPU the profiler's CPU times are launches, not the kernels' work
            # Where a step's time went, in three parts, and how fast its products ran against a square one
            split = profile_split(prof, 5, product_flops_per_token(model) * x[:, :-1].numel())
            split["square_gflops"] = square_gflops(torch.bfloat16 if dtype == "bfloat16" else torch.float32)
            print(json.dumps({"bench": "train_throughput.profile", **split}))
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()  # .item() in step() waits for the device, so the clock measures finished work
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    faults = after.ru_minflt - before.ru_minflt
    tokens = args.steps * args.batch_size * args.seq_len
    flops = flops_per_token(model, model.cfg, args.seq_len)
    draw = batch_ms(args.seq_len, args.batch_size, args.vocab_size)
    peak, peak_why = peak_tflops(device, dtype, args.peak_tflops)
    print(
        json.dumps(
            {
                "bench": "train_throughput",
                "tokens_per_sec": round(tokens / dt, 1),
                "seconds": round(dt, 3),
                "n_layer": args.n_layer,
                "n_head": args.n_head,
                "d_model": args.d_model,
                "seq_len": args.seq_len,
                "batch_size": args.batch_size,
                "vocab_size": args.vocab_size,
                "steps": args.steps,
                "dtype": dtype,
                "compile": args.compile,
                "first_step_s": round(first_step, 2),
                "onednn": not args.no_onednn,
                "malloc": not args.no_malloc,
                "page_faults_per_step": round(faults / args.steps, 1),
                # the kernel's CPU time a step (both threads): mostly faulting in and zeroing fresh pages
                "sys_ms_per_step": round((after.ru_stime - before.ru_stime) / args.steps * 1e3, 1),
                "huge_pages_mb": huge >> 20,
                "peak_rss_mb": after.ru_maxrss >> 10,  # Linux reports KB: the process's peak resident memory
                "huge_pages_s": round(huge_s, 2),
                # drawing a step's batch from memory-mapped shards, as slm train does, against the step itself
                "batch_ms": round(draw, 3),
                "batch_share_of_step": round(draw / (dt / args.steps * 1e3), 5),
                "threads": torch.get_num_threads(),
                "device": args.device,
                "params": model.num_params(False),
                "flops_per_token": flops,
                "tflops": round(tokens / dt * flops / 1e12, 4),
                "mfu": mfu(tokens / dt, flops, peak),
                "peak_tflops": peak,
                "peak_from": peak_why,
                **machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
