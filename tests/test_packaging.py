"""A plain (not editable) install carries the corpora, tasks and recipes, and runs the quickstart from a
folder that is not a checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_plain_install_runs_the_quickstart_from_any_folder(tmp_path: Path):
    site = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    shipped = site / "slm" / "resources"
    assert (shipped / "recipes" / "quickstart.toml").is_file() and (shipped / "tasks" / "mmlu_subset.yaml").is_file()
    assert (shipped / "data" / "shakespeare" / "macbeth.txt").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import slm, sys; print(slm.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr  # the installed copy, not the checkout
    small = ["train.max_steps=3", "train.eval_every=3", "train.ckpt_every=3", "sample.max_tokens=4", "train.threads=1"]
    args = [a for s in small for a in ("--set", s)]
    run = subprocess.run(
        [sys.executable, "-m", "slm", "quickstart", *args, "--out", "run"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((elsewhere / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and 0 < summary["val_bpb"] < 20
    assert (elsewhere / "run" / "samples.md").is_file() and (elsewhere / "run" / "report.html").is_file()
    # tasks are found by name from the installed package too
    ev = subprocess.run(
        [sys.executable, "-m", "slm", "eval", "run", "--tasks", "mmlu_subset", "--limit", "2"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ev.returncode == 0 and "mmlu_subset" in ev.stdout, ev.stderr[-2000:]
