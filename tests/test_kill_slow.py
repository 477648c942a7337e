"""Kill tests: every long job SIGKILLed at random moments, then the same command run again (as a user
would: `--resume` once a checkpoint exists), must end exactly where an uninterrupted run ends, with no
partial file under its final name, no temporaries left behind and no orphaned worker processes.

Slow (minutes): `make test-slow`. The counts are printed at the end (cases, kills, resumes).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from slm.config import config_to_toml, load_config
from slm.model.load import load_model
from slm.run import Run

from .conftest import REPO, tiny_overrides

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
COUNTS = {"jobs": 0, "kills": 0, "resumes": 0}


def slm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "slm", *args]


def descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in kids:
            out.add(int(k))
            todo.append(int(k))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def killed_runs(command, check, seed: int, seconds: float, kills: int = 5) -> int:
    """Start the job, SIGKILL it after a random delay, check what it left, repeat; returns the kills that
    interrupted it. Delays run from 1 s to 40% of an uninterrupted run (`seconds`), so each kill lands
    in a different phase: start-up, data preparation, steps, checkpoint writes."""
    rng = random.Random(seed)
    real = 0
    for _ in range(kills):
        p = subprocess.Popen(command(), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + rng.uniform(1.0, max(1.5, 0.4 * seconds))
        kids: set[int] = set()
        while time.monotonic() < deadline and p.poll() is None:
            kids |= descendants(p.pid)
            time.sleep(0.05)
        if p.poll() is not None:  # finished before the kill came: nothing left to interrupt
            assert p.returncode == 0, p.stderr.read().decode()[-2000:]
            break
        kids |= descendants(p.pid)
        p.send_signal(signal.SIGKILL)
        p.wait()
        real += 1
        t = time.monotonic()
        while any(alive(k) for k in kids) and time.monotonic() - t < 15:
            time.sleep(0.2)
        assert not [k for k in kids if alive(k)], "worker processes outlived the killed job"
        check()
    COUNTS["kills"] += real
    return real


def finish(command) -> float:
    """Run to the end; returns its wall-clock."""
    t0 = time.monotonic()
    r = subprocess.run(command(), env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    COUNTS["resumes"] += 1
    return time.monotonic() - t0


def no_temporaries(root: Path) -> None:
    left = [p for p in root.rglob(".*.tmp*")]
    assert not left, f"temporaries left behind: {left[:5]}"


def files(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(s in str(p.relative_to(root)) for s in skip)
    }


def checkpoints_complete(run: Path) -> None:
    """Every checkpoint visible under its final name loads: no partial one is ever there."""
    for ckpt in Run(run).checkpoints():
        assert load_model(ckpt).model is not None
        json.loads((ckpt / "meta.json").read_text())


@pytest.fixture
def recipe(corpus: Path, tmp_path: Path) -> Path:
    over = [
        *tiny_overrides(corpus, tmp_path / "runs"),
        "train.max_steps=400",
        "train.ckpt_every=25",
        "train.eval_every=100",
        "train.log_every=5",
        "model.d_model=64",
    ]
    path = tmp_path / "tiny.toml"
    path.write_text(config_to_toml(load_config(None, over)))
    return path


def test_train_killed_and_resumed_trains_the_same_model(recipe: Path, tmp_path: Path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    seconds = finish(lambda: slm_cmd("train", str(recipe), "--out", str(ref)))

    def command() -> list[str]:
        if Run(run).latest_checkpoint() is not None:
            return slm_cmd("train", "--resume", str(run))
        return slm_cmd("train", str(recipe), "--out", str(run))

    assert killed_runs(command, lambda: checkpoints_complete(run), 1, seconds) == 5
    finish(command)
    COUNTS["jobs"] += 1
    losses = lambda r: [(m["step"], m["loss"]) for m in Run(r).metrics() if "loss" in m]  # noqa: E731
    assert losses(run) == losses(ref)
    a, b = load_model(ref).model.state_dict(), load_model(run).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    no_temporaries(run)


def test_data_pipeline_killed_and_rerun_writes_the_same_shards(tmp_path: Path):
    from .test_data_pipeline import make_corpus

    recipe = make_corpus(tmp_path / "src", files=60, per_file=400)

    def pipeline(out: Path) -> list[str]:
        return slm_cmd("data", "run", str(recipe), "--out", str(out), "--workers", "2")

    seconds = finish(lambda: pipeline(tmp_path / "ref"))
    out = tmp_path / "out"

    def check() -> None:
        for d in out.glob("*/manifest.json"):
            json.loads(d.read_text())  # a domain folder appears whole or not at all

    assert killed_runs(lambda: pipeline(out), check, 2, seconds) == 5
    finish(lambda: pipeline(out))
    COUNTS["jobs"] += 1
    skip = (".work", "stats.json")
    assert files(out, skip) == files(tmp_path / "ref", skip)
    no_temporaries(out)


def test_mix_sweep_killed_and_rerun_gives_the_same_proxies_and_no_orphans(tmp_path: Path):
    from slm.data.pipeline import run_pipeline

    from .test_data_pipeline import make_corpus
    from .test_mix import load_config_pipeline, tiny

    corpus = run_pipeline(load_config_pipeline(make_corpus(tmp_path / "src", files=3, per_file=60), tmp_path / "c")).out
    over = tiny(
        corpus,
        tmp_path,
        "mix.proxies=6",
        "mix.jobs=2",
        "mix.target={books = 1.0}",
        "mix.search_samples=500",
        "train.max_steps=60",
    )
    recipe = tmp_path / "mix.toml"
    recipe.write_text(config_to_toml(load_config(None, over)))
    seconds = finish(lambda: slm_cmd("mix", "run", str(recipe), "--out", str(tmp_path / "ref")))
    sweep = tmp_path / "sweep"
    assert killed_runs(lambda: slm_cmd("mix", "run", str(recipe), "--out", str(sweep)), lambda: None, 3, seconds) == 5
    finish(lambda: slm_cmd("mix", "run", str(recipe), "--out", str(sweep)))
    COUNTS["jobs"] += 1
    a = json.loads((tmp_path / "ref" / "results.json").read_text())
    b = json.loads((sweep / "results.json").read_text())
    assert [p["target"] for p in a["proxies"]] == [p["target"] for p in b["proxies"]]
    assert a["chosen"] == b["chosen"]
    no_temporaries(sweep)


def test_distillation_cache_and_student_killed_and_resumed(corpus: Path, tmp_path: Path):
    teacher = tmp_path / "teacher"
    over = [*tiny_overrides(corpus, tmp_path / "runs"), "model.d_model=64", "train.max_steps=30"]
    (tmp_path / "t.toml").write_text(config_to_toml(load_config(None, over)))
    finish(lambda: slm_cmd("train", str(tmp_path / "t.toml"), "--out", str(teacher)))
    student = [
        *tiny_overrides(corpus, tmp_path / "runs"),
        f"distill.teacher='{teacher}'",
        "train.max_steps=300",
        "train.ckpt_every=20",
        "distill.cache_windows=256",
        "distill.cache_top_k=8",
    ]

    def recipe(name: str) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(config_to_toml(load_config(None, [*student, f"distill.cache='{tmp_path / name}_cache'"])))
        return path

    seconds = finish(lambda: slm_cmd("distill", str(recipe("ref")), "--out", str(tmp_path / "ref")))
    run = tmp_path / "run"
    rec = recipe("run")

    def command() -> list[str]:
        if Run(run).latest_checkpoint() is not None:
            return slm_cmd("distill", "--resume", str(run))
        return slm_cmd("distill", str(rec), "--out", str(run))

    assert killed_runs(command, lambda: checkpoints_complete(run), 4, seconds) == 5
    finish(command)
    COUNTS["jobs"] += 1
    assert files(tmp_path / "run_cache", ("manifest.json",)) == files(tmp_path / "ref_cache", ("manifest.json",))
    a, b = load_model(tmp_path / "ref").model.state_dict(), load_model(run).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    no_temporaries(run)
    no_temporaries(tmp_path / "run_cache")


def test_select_killed_and_rerun_writes_the_same_corpus(tmp_path: Path):
    from slm.data.pipeline import run_pipeline

    from .test_data_pipeline import make_corpus
    from .test_mix import load_config_pipeline, tiny

    corpus = run_pipeline(
        load_config_pipeline(make_corpus(tmp_path / "src", files=8, per_file=400), tmp_path / "c")
    ).out
    ref_run = tmp_path / "refmodel"
    (tmp_path / "r.toml").write_text(
        config_to_toml(load_config(None, tiny(corpus, tmp_path, "data.mixture={news = 0.5, books = 0.5}")))
    )
    finish(lambda: slm_cmd("train", str(tmp_path / "r.toml"), "--out", str(ref_run)))

    def sel(out: Path) -> list[str]:
        force = ["--force"] if out.exists() else []
        return slm_cmd("select", str(corpus), "-m", str(ref_run), "-o", str(out), "--unit-tokens", "16", *force)

    seconds = finish(lambda: sel(tmp_path / "ref"))
    out = tmp_path / "out"

    def check() -> None:
        assert not out.exists() or (out / "manifest.json").is_file()  # the corpus appears whole or not at all

    assert killed_runs(lambda: sel(out), check, 5, seconds) == 5
    finish(lambda: sel(out))
    COUNTS["jobs"] += 1
    assert files(out) == files(tmp_path / "ref")
    no_temporaries(tmp_path)


def test_zz_counts():
    print(f"\nkill tests: {COUNTS['jobs']} jobs, {COUNTS['kills']} kills, {COUNTS['resumes']} completed reruns")
    assert REPO.is_dir()
