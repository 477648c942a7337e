"""The training loss through the vocabulary projection: whole logit matrix against slm's chunked head.

    python benchmarks/head_loss.py [--rounds 5] [--shapes quickstart,smollm2,gpt2]

For each shape, forward and backward of cross-entropy(h @ W.T) are timed two ways, alternated round by
round in one process: `whole` makes the (tokens x vocabulary) fp32 logits and runs slm's fused
cross_entropy on them (what `slm train` did before); `chunked` is `linear_cross_entropy` (what it does
now). Peak memory is measured apart, one fresh process per way and shape, as the highest resident set
during two forwards and backwards minus the resident set with the inputs made (sampled every millisecond).

With --baseline-src DIR (another checkout's src/), that checkout's chunked head runs as a third way,
`baseline`, alternated with the other two (its slm/model/loss.py, on this checkout's other modules).

Shapes: the quickstart's head (4096 tokens, d 128, vocabulary 4096) and SmolLM2-135M's (8192 tokens,
d 576, vocabulary 49,152) by default; `gpt2` is GPT-2 small's width with SmolLM2's vocabulary at one
1,024-token sequence (d 768, as `vs_nanogpt.py --shape gpt2 --batch-size 1` trains). Ends with one JSON line
of the medians and ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from generation import cpu_flags, cpu_name

from slm.model.loss import cross_entropy, linear_cross_entropy

SHAPES = {"quickstart": (4096, 128, 4096), "smollm2": (8192, 576, 49152), "gpt2": (1024, 768, 49152)}


def inputs(tokens: int, d: int, vocab: int):
    torch.manual_seed(0)
    h = torch.randn(tokens, d, requires_grad=True)
    w = (torch.randn(vocab, d) * 0.02).requires_grad_()
    return h, w, torch.randint(0, vocab, (tokens,))


HEADS = {"chunked": linear_cross_entropy}


def step(way: str, h, w, t) -> None:
    loss = cross_entropy(h @ w.t(), t) if way == "whole" else HEADS[way](h, w, t)
    loss.backward()
    h.grad = w.grad = None


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load_baseline(src: Path) -> None:
    spec = importlib.util.spec_from_file_location("baseline_loss", src / "slm/model/loss.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    HEADS["baseline"] = module.linear_cross_entropy


def child(way: str, shape: str, baseline_src: str | None = None) -> None:
    """In a fresh process: MB the resident set rises above the inputs' during two forwards and backwards,
    sampled every millisecond by a thread (torch's kernels release the GIL)."""
    if baseline_src is not None:
        load_baseline(Path(baseline_src))
    h, w, t = inputs(*SHAPES[shape])
    base, peak, done = rss_mb(), [0.0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.001)

    th = threading.Thread(target=watch)
    th.start()
    for _ in range(2):
        step(way, h, w, t)
    done.set()
    th.join()
    print(max(peak[0], rss_mb()) - base)


def peak_rise(way: str, shape: str, baseline_src: Path | None) -> float:
    here, src = str(Path(__file__).parent), None if baseline_src is None else str(baseline_src)
    code = f"import sys; sys.path.insert(0, {here!r}); import head_loss; head_loss.child({way!r}, {shape!r}, {src!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline-src", type=Path, default=None, help="another checkout's src/, timed as `baseline`")
    ap.add_argument("--shapes", default="quickstart,smollm2", help=f"comma-separated, of {', '.join(SHAPES)}")
    args = ap.parse_args()
    shapes = args.shapes.split(",")
    if unknown := [s for s in shapes if s not in SHAPES]:
        raise SystemExit(f"--shapes: unknown {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    if args.baseline_src is not None:
        load_baseline(args.baseline_src)
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()} ({', '.join(cpu_flags())}), {args.threads} threads, float32", flush=True)
    result: dict[str, object] = {"bench": "head_loss", "cpu": cpu_name(), "cpu_flags": cpu_flags()}
    for shape in shapes:
        dims = SHAPES[shape]
        h, w, t = inputs(*dims)
        times: dict[str, list[float]] = {"whole": [], **{way: [] for way in HEADS}}
        for way in times:
            step(way, h, w, t)  # warm-up
        for r in range(args.rounds):
            for way in list(times) if r % 2 == 0 else list(times)[::-1]:
                t0 = time.perf_counter()
                step(way, h, w, t)
                times[way].append(time.perf_counter() - t0)
        med = {way: statistics.median(v) for way, v in times.items()}
        mem = {way: peak_rise(way, shape, args.baseline_src) for way in times}
        row = {
            f"{shape}_whole_ms": round(1000 * med["whole"], 1),
            f"{shape}_chunked_ms": round(1000 * med["chunked"], 1),
            f"{shape}_speedup": round(med["whole"] / med["chunked"], 3),
            f"{shape}_whole_peak_mb": round(mem["whole"]),
            f"{shape}_chunked_peak_mb": round(mem["chunked"]),
        }
        if "baseline" in med:
            row[f"{shape}_baseline_ms"] = round(1000 * med["baseline"], 1)
            row[f"{shape}_baseline_over_chunked"] = round(med["baseline"] / med["chunked"], 3)
            row[f"{shape}_baseline_peak_mb"] = round(mem["baseline"])
        print(json.dumps({"shape": shape, "tokens_d_vocab": dims, **row}), flush=True)
        result.update(row)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
