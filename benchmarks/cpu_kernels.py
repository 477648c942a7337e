"""The CPU kernel choices of a float32 training step, measured: MKL against oneDNN per product, and the
whole step with and without each choice.

    python benchmarks/cpu_kernels.py [--part products|head|cold|step|compile|pages|inner|rope|norm|mmap|all]
        [--rounds 5] [--dtype float32|auto] [--big]

products  Each float32 product of a training step at the quickstart's shape (4,096 rows; d_model 128, SwiGLU
          352, vocabulary 4,096 in 512-row chunks), forward x @ W.T, backward g @ W and g.T @ x, by MKL (torch.mm)
          and by oneDNN (the op slm.model.matmul uses), alternated in rounds; median GFLOP/s of each. Also
          a sweep of the inner dimension (64 to 1,536) at 4,096 rows, which sets ONEDNN_MAX_INNER.
head      The chunked head's logits and weight-gradient products (d 128, 512-row chunks) by MKL and by
          oneDNN across vocabulary sizes (256 to 65,536), which set the head's rules in slm.model.loss.
step      benchmarks/train_throughput.py at the quickstart's shape in four ways, alternated --rounds times
          (the order turned every other round), each in a fresh process: as slm trains (oneDNN where faster,
          glibc told to reuse freed memory), without oneDNN, without the allocator setting, and with neither
          (as before both). Median tokens/s of each and the ratios of medians to "neither".

compile   The same, compiled (train.compile): eager, compiled as slm compiles (each product left out of the
          compiled graph and run in oneDNN, the elementwise work between them compiled), and the whole step
          compiled with PyTorch's own products (as before). Also each run's first step (seconds), which holds
          the compilation: cold in the first round (a fresh inductor cache), warm in the later ones. With
          --dtype auto, in bf16 autocast where the CPU does bf16 natively (step and pages take it too). With
          --big also eager against compiled as slm compiles at the quickstart's shape with d_model 256 (half
          of --steps), and at pages' wider shape (a quarter of --steps).

cold      Three of the step's oneDNN products called back to back, and after 32 MB of other memory traffic
          (written or read) or 2 ms idle: what a product runs at inside a step, between elementwise passes.

pages     The same, with and without the heap in transparent huge pages after the first step
          (slm.train.memory.heap_huge_pages), at the quickstart's shape and, with --big, at a wider one
          (8 layers, d_model 512, sequence 512, batch 8, vocabulary 8,192).

mmap      The same, with glibc's mmap threshold as slm.train.memory sets it where batch shapes vary (64 MB) and
          as it sets it for fixed-shape objectives such as pretraining's, the largest mallopt takes (2 GB less
          a byte), which keeps every larger tensor in the heap too: tokens/s, page faults and the
          kernel's time a step. With --big also at 2 layers of SmolLM2-135M's width and head, where the logits
          (bf16, --dtype auto) or the head's weight gradient (float32) pass 64 MB (a quarter of --steps there).
          Then, in a fresh process per threshold, 60 rounds of tensors of varying size (200-500 MB and half that,
          as padded SFT batches' logits vary) freed between small long-lived allocations: the peak memory every
          10 rounds, which a threshold above the tensors lets grow (the heap's freed holes no longer fit).

norm      RMSNorm's forward and backward at the training shape ((16, 256, 128)): slm.model.norm's function
          against PyTorch's rms_norm, alternated; checks that both give the same numbers first. Also both
          on one decoded token (1 x 576, no gradient), where slm keeps PyTorch's.

rope      Rotary embeddings' forward and backward at the training shape ((16, 4, 256, 32), a transposed
          view as in the model), alternated: slm's (slm.model.rope.RotaryFunction in training), the rolled
          composition before it (x rolled by half, sin with its first half negated, differentiated op by
          op), and the form before that (a negated half concatenated); checks that the two compositions
          give the same numbers and the function close ones first.

inner     Training steps at the quickstart's shape (with --big also a wider one, and 2 layers of SmolLM2-135M's
          width and head: d 576, vocabulary 49,152) in one process, alternated step by step: oneDNN for
          inner dimensions up to 128 only (the rule measured on AVX2), and this machine's rule
          (slm.model.matmul.ONEDNN_MAX_INNER: every inner dimension on an AMD CPU with AVX-512) twice, as
          two ways whose gap is the noise. Median tokens/s of each over --steps steps.

Prints one JSON line per measurement and a summary line per part; the first line names the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from generation import machine
from train_throughput import setup, train_step

from slm.model.matmul import onednn_product
from slm.model.rope import apply_rope, rope_tables

HERE = Path(__file__).resolve().parent
SHAPE = ["--n-layer", "4", "--n-head", "4", "--d-model", "128", "--seq-len", "256", "--batch-size", "16"]
WAYS = {
    "slm": [],
    "no_onednn": ["--no-onednn"],
    "no_malloc": ["--no-malloc"],
    "neither": ["--no-onednn", "--no-malloc"],
}
# --part compile: eager; compiled as slm compiles (products left out of the graph, in oneDNN); and all of the
# step compiled with PyTorch's own products (what train.compile did before, and what --no-onednn gives)
COMPILE_WAYS = {"eager": [], "compile": ["--compile"], "compile_all": ["--compile", "--no-onednn"]}
PAGE_WAYS = {"huge": [], "small": ["--no-huge-pages"]}
# --part mmap: glibc's mmap threshold as slm sets it where shapes vary (64 MB), and for fixed shapes (the largest
# mallopt takes, 2 GB less a byte)
MMAP_WAYS = {"mmap_64mb": ["--mmap-threshold-mb", "64"], "heap_2gb": ["--mmap-threshold-mb", "2047"]}
# 2 layers of SmolLM2-135M's width and head (d 576, 9 heads, vocabulary 49,152), as --part inner's third shape
SMOLLM2_LAYERS = ["--n-layer", "2", "--n-head", "9", "--d-model", "576", "--seq-len", "256", "--batch-size", "8"]
BIG = ["--n-layer", "8", "--n-head", "8", "--d-model", "512", "--seq-len", "512", "--batch-size", "8"]
# the quickstart's shape at twice its width, for --part compile --big
D256 = ["--n-layer", "4", "--n-head", "4", "--d-model", "256", "--seq-len", "256", "--batch-size", "16"]


def timed(fns: dict, rounds: int, reps: int = 6) -> dict[str, float]:
    """Median seconds of each function, the functions alternated within every round."""
    seconds: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            for _ in range(reps):
                t0 = time.perf_counter()
                f()
                seconds[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in seconds.items()}


def products(rounds: int) -> None:
    # (name, rows, inner, outer): forward x @ W.T has inner = in_features; backward g @ W has inner = out.
    cases = [
        ("q/k/v/o forward", 4096, 128, 128),
        ("gate/up forward", 4096, 128, 352),
        ("down forward", 4096, 352, 128),
        ("q/k/v/o backward", 4096, 128, 128),
        ("down backward", 4096, 128, 352),
        ("gate/up backward", 4096, 352, 128),
        ("head chunk forward", 512, 128, 4096),
        # weight gradients g.T @ x: rows = out_features, inner = the step's rows, both operands transposed views
        ("q/k/v/o weight gradient", 128, 4096, 128),
        ("gate/up weight gradient", 352, 4096, 128),
        ("head chunk weight gradient", 4096, 512, 128),
        ("down weight gradient", 128, 4096, 352),  # its transpose is the gate/up case's shape
        # the head's share made as its transpose (d, V), as slm.model.loss does where d <= ONEDNN_MAX_INNER
        ("head chunk weight gradient as (d, V)", 128, 512, 4096),
        ("SmolLM2 head chunk weight gradient", 49152, 512, 576),
        ("SmolLM2 head chunk weight gradient as (d, V)", 576, 512, 49152),
        *[(f"sweep inner {k}", 4096, k, 3 * k) for k in (64, 128, 192, 256, 384, 576, 768, 1536)],
    ]
    for name, rows, inner, outer in cases:
        a, w = torch.randn(rows, inner), torch.randn(outer, inner)
        if "backward" in name:  # g @ W for a weight W (inner, outer): oneDNN gets W's transpose as a view
            w = torch.randn(inner, outer).t()
        if "weight gradient" in name:  # g.T @ x, g (inner, rows) and x (inner, outer) as they come
            a, w = torch.randn(inner, rows).t(), torch.randn(inner, outer).t()
        t = timed({"mkl": lambda a=a, w=w: torch.mm(a, w.t()), "onednn": lambda a=a, w=w: onednn_product(a, w)}, rounds)
        flop = 2 * rows * inner * outer
        gf = {k: round(flop / v / 1e9, 1) for k, v in t.items()}
        row = {"bench": "cpu_kernels.product", "case": name, "rows": rows, "inner": inner, "outer": outer}
        print(json.dumps({**row, "mkl_gflops": gf["mkl"], "onednn_gflops": gf["onednn"],
                          "onednn_over_mkl": round(gf["onednn"] / gf["mkl"], 3)}), flush=True)  # fmt: skip


# --part mmap's last measurement, in a child process: tensors of varying size, each freed after a small tensor
# that stays is made, under glibc's mmap threshold argv[1] (MB); peak memory (MB) every 10 rounds.
FRAGMENT_CHILD = """
import random, resource, sys, torch
from slm.train import memory
memory.reuse_freed_memory(int(sys.argv[1]) << 20)
torch.set_num_threads(2)
random.seed(0)
kept, peaks = [], []
for i in range(60):
    n = random.randint(50, 125) << 20  # 200-500 MB of float32
    a = torch.empty(n).fill_(1.0)
    b = torch.empty(n // 2).fill_(2.0)
    kept.append(torch.ones(1000))
    del a, b
    if i % 10 == 9:
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10)
print(peaks)
"""


def fragmentation() -> None:
    for mb in (64, 2047):
        p = subprocess.run([sys.executable, "-c", FRAGMENT_CHILD, str(mb)], capture_output=True, text=True, check=True)
        peaks = json.loads(p.stdout.strip())
        print(json.dumps({"bench": "cpu_kernels.fragmentation", "mmap_threshold_mb": mb, "peak_mb_every_10": peaks}))


def cold(rounds: int) -> None:
    """Three of the step's oneDNN products called back to back (as a microbenchmark times them) and after 32 MB
    of other memory traffic, written or read (as in a step, where elementwise passes run between products),
    or after 2 ms idle: median GFLOP/s of each, alternated."""
    junk = torch.randn(8 << 20)
    before = {"back_to_back": lambda: None, "after_32mb_written": lambda: junk.mul_(1.0),
              "after_32mb_read": lambda: junk.sum(), "after_2ms_idle": lambda: time.sleep(0.002)}  # fmt: skip
    cases = [("q/k/v/o forward", 4096, 128, 128), ("gate/up forward", 4096, 128, 352), ("head chunk", 512, 128, 4096)]
    for name, rows, inner, outer in cases:
        a, w = torch.randn(rows, inner), torch.randn(outer, inner)
        seconds: dict[str, list[float]] = {k: [] for k in before}
        for _ in range(rounds):
            for k, prep in before.items():
                for _ in range(10):
                    prep()
                    t0 = time.perf_counter()
                    onednn_product(a, w)
                    seconds[k].append(time.perf_counter() - t0)
        flop = 2 * rows * inner * outer
        gf = {k: round(flop / statistics.median(v) / 1e9, 1) for k, v in seconds.items()}
        print(json.dumps({"bench": "cpu_kernels.cold", "case": name, **{f"{k}_gflops": v for k, v in gf.items()}}))


HEAD_VOCABS = [256, 1000, 1024, 2048, 3000, 4096, 6144, 8192, 12288, 16384, 32000, 32768, 49152, 65536]


def head(rounds: int, d: int = 128, rows: int = 512) -> None:
    """The chunked head's two products that slm.model.loss may give oneDNN, across vocabulary sizes: a chunk's
    logits (MKL writing into a reused buffer, as the head does, against oneDNN's new tensor), and its share of
    the weight's gradient (MKL accumulating g.T @ x into the (V, d) sum in place, against oneDNN making the
    transpose x.T @ g, (d, V), added to a (d, V) sum)."""
    for vocab in HEAD_VOCABS:
        x, w, g = torch.randn(rows, d), torch.randn(vocab, d), torch.randn(rows, vocab)
        buf, acc, acc_t = torch.empty(rows, vocab), torch.zeros(vocab, d), torch.zeros(d, vocab)
        fns = {
            "logits_mkl": lambda x=x, w=w, buf=buf: torch.mm(x, w.t(), out=buf),
            "logits_onednn": lambda x=x, w=w: onednn_product(x, w),
            "grad_mkl": lambda x=x, g=g, acc=acc: acc.addmm_(g.t(), x),
            "grad_onednn": lambda x=x, g=g, acc_t=acc_t: acc_t.add_(onednn_product(x.t(), g.t())),
        }
        t = timed(fns, rounds, reps=3)
        print(json.dumps({"bench": "cpu_kernels.head", "vocab": vocab, "d": d, "rows": rows,
                          **{f"{k}_ms": round(v * 1e3, 3) for k, v in t.items()},
                          "logits_onednn_over_mkl": round(t["logits_mkl"] / t["logits_onednn"], 3),
                          "grad_onednn_over_mkl": round(t["grad_mkl"] / t["grad_onednn"], 3)}),
              flush=True)  # fmt: skip


def step(
    rounds: int,
    steps: int,
    ways: dict[str, list[str]],
    base: str,
    bench: str,
    shape: list[str] | None = None,
    dtype: str = "float32",
) -> None:
    got: dict[str, list[float]] = {k: [] for k in ways}
    first: dict[str, list[float]] = {k: [] for k in ways}
    # An inductor cache of this run's own: the first round compiles cold, the later ones find it warm.
    cache = tempfile.mkdtemp(prefix="slm_inductor_")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    for r in range(rounds):
        # The order turns every other round (A B, B A, ...): on this shared machine the second of two runs in a
        # row was often slower or faster whatever it ran, which a fixed order charges to one way. (Round 0 is
        # always in the given order, so --part compile's first round still compiles each way cold.)
        for way, flags in list(ways.items())[:: -1 if r % 2 else 1]:
            cmd = [sys.executable, str(HERE / "train_throughput.py"), *(shape or [*SHAPE, "--vocab-size", "4096"])]
            p = subprocess.run(
                [*cmd, "--steps", str(steps), "--dtype", dtype, *flags],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            line = json.loads(p.stdout.strip().splitlines()[-1])
            got[way].append(line["tokens_per_sec"])
            first[way].append(line["first_step_s"])
            print(json.dumps({"bench": bench, "way": way, "round": r, "tokens_per_sec": line["tokens_per_sec"],
                              "first_step_s": line["first_step_s"], "huge_pages_mb": line["huge_pages_mb"],
                              "huge_pages_s": line["huge_pages_s"],
                              "page_faults_per_step": line["page_faults_per_step"],
                              "sys_ms_per_step": line["sys_ms_per_step"],
                              "peak_rss_mb": line["peak_rss_mb"]}), flush=True)  # fmt: skip
    shutil.rmtree(cache, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in got.items()}
    print(json.dumps({"bench": bench, "rounds": rounds, "steps": steps,
                      **{f"{k}_tokens_per_sec": v for k, v in med.items()},
                      **{f"{k}_first_step_cold_s": v[0] for k, v in first.items()},
                      **{f"{k}_first_step_warm_s": round(statistics.median(v[1:] or v), 2) for k, v in first.items()},
                      **{f"{k}_over_{base}": round(v / med[base], 3) for k, v in med.items()}}))  # fmt: skip


def timed_step(model, opt, x: torch.Tensor, max_inner: int) -> float:
    """Seconds of one float32 training step with oneDNN taking products of inner dimension up to max_inner."""
    from slm.model import matmul

    matmul.ONEDNN_MAX_INNER = max_inner
    t0 = time.perf_counter()
    train_step(model, opt, x)
    return time.perf_counter() - t0


def inner(steps: int, big: bool) -> None:
    """Training steps in one process, alternated step by step (which cancels the drift between runs that
    separate processes see on a shared machine): oneDNN for products of inner dimension up to 128 only (the
    rule measured on AVX2), and this machine's rule (slm.model.matmul.ONEDNN_MAX_INNER) twice, as two ways:
    the two give the same steps, so the gap between them is the measurement's noise."""
    from slm.model import matmul
    from slm.train.memory import MMAP_THRESHOLD_FIXED_SHAPES, heap_huge_pages, reuse_freed_memory

    reuse_freed_memory(MMAP_THRESHOLD_FIXED_SHAPES)  # as slm train does for pretraining
    mine = matmul.ONEDNN_MAX_INNER
    ways = {"inner_128": 128, "this_machine": mine, "this_machine_again": mine}
    shapes = {"quickstart": (4, 4, 128, 256, 16, 4096)}
    if big:  # (layers, heads, d_model, sequence, batch, vocabulary); the last has SmolLM2-135M's width and head
        shapes |= {"big": (8, 8, 512, 512, 8, 8192), "smollm2_width": (2, 9, 576, 256, 8, 49152)}
    for name, (layers, heads, d, seq, batch, vocab) in shapes.items():
        model, opt, x = setup(layers, heads, d, seq, batch, vocab)
        for limit in ways.values():
            timed_step(model, opt, x, limit)
        heap_huge_pages()  # as slm train does after its first step
        for limit in [*ways.values()] * 2:
            timed_step(model, opt, x, limit)
        got: dict[str, list[float]] = {k: [] for k in ways}
        for i in range(steps):
            for way in ways if i % 2 == 0 else reversed(ways):
                got[way].append(timed_step(model, opt, x, ways[way]))
        matmul.ONEDNN_MAX_INNER = mine
        med = {k: statistics.median(v) for k, v in got.items()}
        print(json.dumps({"bench": "cpu_kernels.inner", "shape": name, "steps": steps, "this_machine_max_inner": mine,
                          **{f"{k}_tokens_per_sec": round(batch * seq / v, 1) for k, v in med.items()},
                          **{f"{k}_over_inner_128": round(med["inner_128"] / v, 4) for k, v in med.items()}}),
              flush=True)  # fmt: skip


def norm(rounds: int) -> None:
    from slm.model.norm import RMSNormFunction, rms_norm

    base, weight, grad = torch.randn(16, 256, 128), 1 + 0.1 * torch.randn(128), torch.randn(16, 256, 128)

    def run(f) -> tuple[torch.Tensor, ...]:
        x, w = base.clone().requires_grad_(), weight.clone().requires_grad_()
        y = f(x, w)
        y.backward(grad)
        return y, x.grad, w.grad

    def slm(x, w):
        return rms_norm(x, w, 1e-5)

    # the same numbers to float32 rounding (the weight's gradient sums 4,096 rows), or the timing means nothing
    for a, b, tol in zip(run(pytorch_rms_norm), run(slm), (1e-5, 1e-5, 1e-3), strict=True):
        if not torch.allclose(a, b, rtol=1e-5, atol=tol):
            raise SystemExit("slm's RMSNorm differs from PyTorch's")
    t = timed({"pytorch": lambda: run(pytorch_rms_norm), "slm": lambda: run(slm)}, rounds, reps=10)
    ms = {k: round(v * 1e3, 3) for k, v in t.items()}
    # One decoded token (no gradient): why inference keeps PyTorch's path (slm's autograd function, forced)
    one, w1 = torch.randn(1, 1, 576), torch.ones(576)
    with torch.no_grad():
        decode = {
            "pytorch": lambda: pytorch_rms_norm(one, w1),
            "function": lambda: RMSNormFunction.apply(one, w1, 1e-5),
        }
        d = timed(decode, rounds, reps=200)
    print(json.dumps({"bench": "cpu_kernels.norm", "pytorch_ms": ms["pytorch"], "slm_ms": ms["slm"],
                      "pytorch_over_slm": round(t["pytorch"] / t["slm"], 3),
                      "decode_pytorch_us": round(d["pytorch"] * 1e6, 1),
                      "decode_function_us": round(d["function"] * 1e6, 1)}))  # fmt: skip


def pytorch_rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.rms_norm(x, (x.size(-1),), w, 1e-5)


def rope_before(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """slm.model.rope.apply_rope as it was before the rolled form."""
    half = x.size(-1) // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def rope_rolled(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rolled form, differentiated by autograd op by op (what training ran before RotaryFunction)."""
    half = x.size(-1) // 2
    return x * cos + x.roll(half, -1) * torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def rope(rounds: int) -> None:
    cos, sin = rope_tables(32, 256, 10000.0)
    base, grad = torch.randn(16, 256, 4, 32), torch.randn(16, 4, 256, 32)

    def run(f) -> tuple[torch.Tensor, torch.Tensor]:
        x = base.clone().requires_grad_()
        y = f(x.transpose(1, 2), cos, sin)
        y.backward(grad)
        return y, x.grad

    (y0, g0), (y1, g1), (y2, g2) = run(rope_before), run(rope_rolled), run(apply_rope)
    if not (torch.equal(y0, y1) and torch.equal(g0, g1)):
        raise SystemExit("the two composed forms of rotary embeddings differ")
    # the function's multiply-adds may round differently (fused or not): close, not bit for bit
    if not (torch.allclose(y1, y2, rtol=1e-5, atol=1e-6) and torch.allclose(g1, g2, rtol=1e-5, atol=1e-6)):
        raise SystemExit("slm's rotary function differs from the composed form")
    ways = {"before": lambda: run(rope_before), "rolled": lambda: run(rope_rolled), "slm": lambda: run(apply_rope)}
    t = timed(ways, rounds, reps=10)
    ms = {k: round(v * 1e3, 3) for k, v in t.items()}
    print(json.dumps({"bench": "cpu_kernels.rope", **{f"{k}_ms": v for k, v in ms.items()},
                      "before_over_slm": round(t["before"] / t["slm"], 3),
                      "rolled_over_slm": round(t["rolled"] / t["slm"], 3)}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--part",
        choices=["products", "head", "cold", "step", "rope", "norm", "compile", "pages", "inner", "mmap", "all"],
        default="all",
    )
    ap.add_argument("--big", action="store_true", help="--part compile, pages, inner and mmap at wider shapes too")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--steps", type=int, default=30, help="timed steps of each training run (--part step, compile, pages, inner)"
    )
    ap.add_argument(
        "--dtype",
        choices=["float32", "auto"],
        default="float32",
        help="the training dtype of --part step, compile, pages and mmap (auto: bf16 autocast where the CPU has bf16)",
    )
    args = ap.parse_args()
    print(json.dumps({"bench": "cpu_kernels.machine", **machine()}), flush=True)
    if args.part in ("products", "all"):
        products(args.rounds)
    if args.part in ("head", "all"):
        head(args.rounds)
    if args.part in ("cold", "all"):
        cold(args.rounds)
    if args.part in ("norm", "all"):
        norm(args.rounds)
    if args.part in ("rope", "all"):
        rope(args.rounds)
    if args.part in ("step", "all"):
        step(args.rounds, args.steps, WAYS, "neither", "cpu_kernels.step", dtype=args.dtype)
    if args.part in ("compile", "all"):
        step(args.rounds, args.steps, COMPILE_WAYS, "eager", "cpu_kernels.compile", dtype=args.dtype)
        if args.big:
            ways = {k: COMPILE_WAYS[k] for k in ("eager", "compile")}
            d256 = [*D256, "--vocab-size", "4096"]
            step(args.rounds, max(4, args.steps // 2), ways, "eager", "cpu_kernels.compile_d256", d256, args.dtype)
            big, steps = [*BIG, "--vocab-size", "8192"], max(4, args.steps // 4)
            step(args.rounds, steps, ways, "eager", "cpu_kernels.compile_big", big, args.dtype)
    if args.part in ("inner", "all"):
        inner(args.steps, args.big)
    if args.part in ("pages", "all"):
        step(args.rounds, args.steps, PAGE_WAYS, "small", "cpu_kernels.pages", dtype=args.dtype)
        if args.big:
            big = [*BIG, "--vocab-size", "8192"]
            step(args.rounds, args.steps, PAGE_WAYS, "small", "cpu_kernels.pages_big", big, args.dtype)
    if args.part in ("mmap", "all"):
        step(args.rounds, args.steps, MMAP_WAYS, "mmap_64mb", "cpu_kernels.mmap", dtype=args.dtype)
        if args.big:
            shape = [*SMOLLM2_LAYERS, "--vocab-size", "49152"]
            steps = max(4, args.steps // 4)
            step(args.rounds, steps, MMAP_WAYS, "mmap_64mb", "cpu_kernels.mmap_smollm2", shape, args.dtype)
        fragmentation()


if __name__ == "__main__":
    main()
