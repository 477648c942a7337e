"""The quickstart's two targets in one run: wall-clock of `slm quickstart` and held-out bits-per-byte.

    python benchmarks/quickstart.py [--set train.seed=1 --set train.compile=true ...]

Runs the real command in a fresh temporary run folder, with any --set overrides passed on, and prints one JSON
line (targets: < 300 s, validation bits-per-byte on Macbeth <= 2.5), with the first step's seconds (which hold
torch.compile's compilation where the run compiled) and whether it compiled.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", default=[], help="a recipe override for slm quickstart (repeatable)")
    args = ap.parse_args()
    sets = [a for s in args.set for a in ("--set", s)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "quickstart"
        t0 = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-m", "slm", "quickstart", "--out", str(out), *sets], capture_output=True, text=True
        )
        seconds = time.perf_counter() - t0
        if p.returncode:
            sys.exit(p.stderr[-2000:])
        summary = json.loads((out / "summary.json").read_text())
    print(
        json.dumps(
            {
                "bench": "quickstart",
                "seconds": round(seconds, 1),
                "val_bpb": summary["val_bpb"],
                "train_seconds": round(summary["train_seconds"], 1),
                "first_step_seconds": round(summary["first_step_seconds"], 1),
                "compiled": summary["compiled"],
                "set": args.set,
                "tokens": summary["tokens"],
                "meets_targets": seconds < 300 and summary["val_bpb"] <= 2.5,
            }
        )
    )


if __name__ == "__main__":
    main()
