"""The pipeline end to end on a small mixed corpus: funnel arithmetic, output, resume after a kill."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slm.config import PipelineConfig, load_recipe
from slm.data.pipeline import run_pipeline
from slm.data.shards import Shards
from slm.data.stats import STEPS
from slm.errors import SlmError
from slm.tokenizer import load_tokenizer

from .test_data_steps import PROSE

REPO = Path(__file__).resolve().parents[1]


def _doc(rng: random.Random) -> str:
    words = PROSE.split()
    return " ".join(rng.choice(words) for _ in range(120)) + "."


def make_corpus(root: Path, files: int = 4, per_file: int = 30) -> Path:
    rng = random.Random(1)
    news = root / "news"
    news.mkdir(parents=True)
    planted = _doc(rng)
    for k in range(files):
        lines = [json.dumps({"text": _doc(rng)}) for _ in range(per_file)]
        lines.append(json.dumps({"text": planted}))  # exact copy in every file
        lines.append(json.dumps({"text": planted.replace(".", "!", 1) + " extra"}))  # near copy
        lines.append("{broken json")
        lines.append(json.dumps({"text": "short"}))  # filtered
        (news / f"part{k}.jsonl").write_text("\n".join(lines) + "\n")
    books = root / "books"
    books.mkdir()
    for k in range(3):
        (books / f"b{k}.txt").write_text("\n\n".join(PROSE + f" Chapter {k}.{i}." for i in range(5)))
    (books / "held.txt").write_text("\n\n".join(_doc(rng) for _ in range(4)))
    recipe = root / "recipe.toml"
    recipe.write_text(
        f"""
name = "mini"
out = "{root / "out"}"
workers = 1
[[sources]]
domain = "news"
paths = ["{news}/*.jsonl"]
license = "CC0"
[[sources]]
domain = "books"
paths = ["{books}"]
val_paths = ["{books / "held.txt"}"]
split = "paragraph"
license = "public domain"
[filters]
min_words = 20
[tokenizer]
vocab_size = 300
"""
    )
    return recipe


def _steps(stats: dict) -> dict:
    return stats["steps"]


def test_funnel_adds_up_and_shards_are_usable(tmp_path):
    cfg = load_recipe(PipelineConfig, make_corpus(tmp_path))
    res = run_pipeline(cfg)
    for part in [res.stats["total"], *res.stats["domains"].values()]:
        steps = _steps(part)
        for s, v in steps.items():
            assert v["kept"] + sum(v["dropped"].values()) == v["seen"], s
        chain = [steps[s] for s in STEPS]
        for a, b in itertools.pairwise(chain):
            assert a["kept"] == b["seen"]
    total = _steps(res.stats["total"])
    assert total["read"]["dropped"] == {"invalid_json": 4}
    assert total["filter"]["dropped"]["too_few_words"] >= 4
    assert total["exact_dedup"]["dropped"] == {"exact_duplicate": 6}  # planted doc and its near copy, 3 repeats each
    news = _steps(res.stats["domains"]["news"])
    assert news["near_dedup"]["dropped"] == {"near_duplicate": 1}  # the near copy of the planted doc
    books = _steps(res.stats["domains"]["books"])
    assert books["near_dedup"]["dropped"] == {"near_duplicate": 14}  # 15 paragraphs differ by a chapter number
    assert any(":" in e and "part0.jsonl:33" in e for e in res.stats["total"]["errors"])
    written = sum(d[s]["documents"] for d in res.manifest["domains"].values() for s in ("train", "val"))
    assert written == total["write"]["kept"]
    tok = load_tokenizer(res.out / "tokenizer.json")
    for domain in ("news", "books"):
        sh = Shards.open(res.out / domain)
        sh.check_tokenizer(tok)
        assert len(sh.tokens("train")) > 0 and len(sh.tokens("val")) > 0
    assert res.manifest["domains"]["books"]["val"]["documents"] == 4  # exactly the held-out file's paragraphs
    assert res.manifest["domains"]["news"]["licenses"] == ["CC0"]


def test_two_workers_give_the_same_output_as_one(tmp_path):
    recipe = make_corpus(tmp_path)
    a = run_pipeline(load_recipe(PipelineConfig, recipe, [f'out="{tmp_path / "a"}"']))
    b = run_pipeline(load_recipe(PipelineConfig, recipe, [f'out="{tmp_path / "b"}"', "workers=2"]))
    for d in ("news", "books"):
        for f in ("train.bin", "val.bin"):
            assert (a.out / d / f).read_bytes() == (b.out / d / f).read_bytes()
    assert a.stats["total"] == b.stats["total"]


def test_jsonl_output(tmp_path):
    recipe = make_corpus(tmp_path)
    res = run_pipeline(load_recipe(PipelineConfig, recipe, ['output.format="jsonl"']))
    lines = (res.out / "news" / "train.jsonl").read_text().splitlines() + (
        res.out / "news" / "val.jsonl"
    ).read_text().splitlines()
    assert len(lines) == _steps(res.stats["domains"]["news"])["write"]["kept"]
    assert all("text" in json.loads(x) for x in lines)


def test_rerun_does_no_work_twice_and_a_changed_recipe_is_refused(tmp_path):
    recipe = make_corpus(tmp_path)
    cfg = load_recipe(PipelineConfig, recipe)
    first = run_pipeline(cfg)
    stamp = {p: p.stat().st_mtime_ns for p in (first.out / ".work" / "tasks").rglob("*")}
    stamp[first.out / "news" / "train.bin"] = (first.out / "news" / "train.bin").stat().st_mtime_ns
    again = run_pipeline(cfg)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert again.manifest == first.manifest
    with pytest.raises(SlmError, match="different pipeline recipe"):
        run_pipeline(load_recipe(PipelineConfig, recipe, ["filters.min_words=5"]))


def test_parquet_without_the_field_stops_before_any_work(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "a.parquet")
    cfg = PipelineConfig(out=str(tmp_path / "out"), sources=[{"domain": "d", "paths": [str(tmp_path / "a.parquet")]}])
    with pytest.raises(SlmError, match="no column 'text'"):
        run_pipeline(cfg)
    assert not (tmp_path / "out" / ".work" / "tasks").exists()


def test_same_file_listed_twice_is_read_once(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text(PROSE)
    cfg = PipelineConfig(
        out=str(tmp_path / "out"),
        sources=[{"domain": "d", "paths": [str(f), str(tmp_path / "*.txt")], "filter": False}],
        output={"format": "jsonl"},
    )
    res = run_pipeline(cfg)
    assert res.stats["total"]["notes"]["duplicate_paths_ignored"] == 1
    assert _steps(res.stats["total"])["read"]["seen"] == 1


def test_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path):
    recipe = make_corpus(tmp_path, files=24, per_file=400)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "slm", "data", "run", str(recipe), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tasks = out / ".work" / "tasks"
    deadline = time.time() + 120
    while time.time() < deadline and not (tasks.is_dir() and len(list(tasks.glob("0*"))) >= 3):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(tasks.glob("0*")))
    assert 3 <= done_before < 28, "the kill should land mid-way"
    resumed = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert f"resuming: {done_before} of 28 input files already processed" in resumed.stdout  # 24 + 4 files
    clean = run_pipeline(load_recipe(PipelineConfig, recipe, [f'out="{tmp_path / "clean"}"']))
    for d in ("news", "books"):
        for f in ("train.bin", "val.bin"):
            assert (out / d / f).read_bytes() == (clean.out / d / f).read_bytes()
    killed_stats = json.loads((out / "stats.json").read_text())
    assert killed_stats["total"]["steps"] == clean.stats["total"]["steps"]


def test_ray_runs_the_same_recipe(tmp_path):
    pytest.importorskip("ray")  # the cluster extra; installed by `make test`
    import ray

    recipe = make_corpus(tmp_path)
    local = run_pipeline(load_recipe(PipelineConfig, recipe, [f'out="{tmp_path / "a"}"']))
    try:
        on_ray = run_pipeline(load_recipe(PipelineConfig, recipe, [f'out="{tmp_path / "b"}"', 'ray_address="local"']))
    finally:
        ray.shutdown()
    assert (local.out / "news" / "train.bin").read_bytes() == (on_ray.out / "news" / "train.bin").read_bytes()
    assert local.stats["total"] == on_ray.stats["total"]


def test_cli_prints_the_funnel_and_bad_recipes_get_one_line(tmp_path):
    recipe = make_corpus(tmp_path)
    r = subprocess.run([sys.executable, "-m", "slm", "data", "run", str(recipe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "pipeline funnel" in r.stdout and "exact_duplicate" in r.stdout and "books" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[[sources]]\ndomain = "x"\npaths = ["nothing/*.txt"]\n[filters]\nmin_wrds = 3\n')
    r = subprocess.run([sys.executable, "-m", "slm", "data", "run", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown key 'filters.min_wrds'; did you mean 'min_words'?" in r.stderr
    bad.write_text('[[sources]]\ndomain = "x"\npaths = ["nothing/*.txt"]\n')
    r = subprocess.run(
        [sys.executable, "-m", "slm", "data", "run", str(bad), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "input 'nothing/*.txt' matches no file" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "slm", "data", "run", str(bad), "--set", "filters.min_wrds=3"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "unknown key 'min_wrds' in filters; did you mean 'min_words'?" in r.stderr


def test_committed_recipes_validate_and_the_builtin_recipe_runs(tmp_path):
    load_recipe(PipelineConfig, REPO / "recipes" / "data-dictionaries.toml")
    cfg = load_recipe(PipelineConfig, REPO / "recipes" / "data-builtin.toml", [f'out="{tmp_path / "b"}"'])
    res = run_pipeline(cfg)
    d = res.manifest["domains"]
    assert set(d) == {"drama", "scripture", "definitions", "docs", "code", "spanish"}
    assert d["drama"]["val"]["documents"] == 1 and d["drama"]["train"]["documents"] == 8  # Macbeth held out
    assert all(v["train"]["tokens"] > 30_000 and v["val"]["tokens"] > 5_000 for v in d.values())
