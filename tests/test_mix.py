"""Mixture search: sampling statistics, regression on a known optimum, mixtures in training, a tiny sweep
end to end with resume and a failed proxy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slm.config import load_config
from slm.data.mixture import MixtureShards, check_mixture, natural_weights
from slm.data.pipeline import run_pipeline
from slm.errors import SlmError
from slm.mix.regress import fit, min_proxies, search
from slm.mix.sample import sample_mixtures
from slm.mix.search import run_mix

from .test_data_pipeline import make_corpus


def test_mixture_samples_centre_on_natural_and_concentration_tightens_them():
    natural = np.array([0.5, 0.3, 0.15, 0.05])
    loose = sample_mixtures(natural, 20000, 1.0, seed=0)
    tight = sample_mixtures(natural, 20000, 10.0, seed=0)
    assert np.allclose(loose.sum(1), 1.0)
    assert np.allclose(loose.mean(0), natural, atol=0.01) and np.allclose(tight.mean(0), natural, atol=0.01)
    assert (tight.std(0) < loose.std(0)).all()
    assert np.array_equal(sample_mixtures(natural, 5, 1.0, 3), sample_mixtures(natural, 5, 1.0, 3))


def test_regression_recovers_a_known_optimum():
    best = np.array([0.5, 0.3, 0.2])
    rng = np.random.default_rng(0)
    X = sample_mixtures(np.full(3, 1 / 3), 80, 1.0, seed=1)
    y = 3.0 + 10 * ((X - best) ** 2).sum(1) + rng.normal(0, 0.01, len(X))
    f = fit(X, y, holdout=0.25, seed=0)
    assert f.holdout["lightgbm"]["spearman"] > 0.8
    chosen, _, _ = search(f.models["lightgbm"], np.full(3, 1 / 3), 20000, 1.0, 50, seed=0)
    assert np.abs(chosen - best).sum() < 0.2
    with pytest.raises(SlmError, match="needs at least 8 finished proxies for 3 domains"):
        fit(X[:5], y[:5], 0.25, 0)
    assert min_proxies(6) == 14


def test_mixture_weights_are_checked():
    notes = []
    assert check_mixture({"a": 2.0, "b": 2.0}, ["a", "b"], notes.append) == {"a": 0.5, "b": 0.5}
    assert "normalised" in notes[0]
    with pytest.raises(SlmError, match=r"unknown domain.*zzz.*the corpus has a, b"):
        check_mixture({"zzz": 1.0}, ["a", "b"])
    with pytest.raises(SlmError, match="negative"):
        check_mixture({"a": -0.1, "b": 1.1}, ["a", "b"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixcorpus")
    res = run_pipeline(
        load_config_pipeline(make_corpus(root / "src", files=3, per_file=60), root / "corpus")  # news + books
    )
    return res.out


def load_config_pipeline(recipe: Path, out: Path):
    from slm.config import PipelineConfig, load_recipe

    return load_recipe(PipelineConfig, recipe, [f'out="{out}"', "output.val_fraction=0.2"])


def tiny(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"data.shards='{corpus}'",
        "model.n_layer=1",
        "model.n_head=2",
        "model.d_model=16",
        "model.max_seq_len=32",
        "train.batch_size=4",
        "train.max_steps=6",
        "train.warmup_steps=1",
        "train.eval_every=100",
        "train.ckpt_every=100",
        "train.threads=1",
        "train.dtype='float32'",
        "sample.prompts=[]",
        f"out_dir='{out}'",
        *extra,
    ]


def test_training_on_a_mixture_reports_every_domain(corpus, tmp_path):
    from slm.run import Run
    from slm.train.loop import train

    cfg = load_config(None, tiny(corpus, tmp_path, "data.mixture={news = 0.7, books = 0.3}"))
    s = train(cfg, Run(tmp_path / "r"), progress=False)
    assert set(s["val_bpb_by_domain"]) == {"news", "books"}
    shards = MixtureShards(corpus, {"news": 1.0, "books": 0.0}, [])
    b = shards.batcher(32, 64, seed=0)
    x = b.batch(0, 0).inputs
    news = set(np.asarray(shards.domains["news"].tokens("train")).tolist())
    assert set(x.flatten().tolist()) <= news  # weight 0: books never drawn
    assert natural_weights(corpus).keys() == {"news", "books"}


def test_sweep_end_to_end_resumes_and_records_failures(corpus, tmp_path):
    over = tiny(
        corpus,
        tmp_path,
        "mix.proxies=6",
        "mix.jobs=1",
        "mix.target={books = 1.0}",
        "mix.search_samples=500",
        "mix.search_top_k=10",
    )
    cfg = load_config(None, over)
    out = tmp_path / "sweep"
    first = run_mix(cfg, out, log=lambda m: None)
    assert len([p for p in first["proxies"] if p["status"] == "ok"]) == 6
    assert abs(sum(first["chosen"].values()) - 1) < 1e-9
    assert "mixture" in (out / "mixture.toml").read_text() and (out / "report.html").stat().st_size > 10_000
    assert set(first["fit"]["correlation"]) == {"lightgbm", "linear"}
    # a killed sweep: one proxy never finished; the rerun trains only that one
    victim = out / "proxies" / "p003"
    (victim / "summary.json").unlink()
    stamps = {p: (p / "summary.json").stat().st_mtime_ns for p in (out / "proxies").iterdir() if p != victim}
    logs: list[str] = []
    again = run_mix(cfg, out, log=logs.append)
    assert any("resuming: 5 of 6" in m for m in logs)
    assert {p: (p / "summary.json").stat().st_mtime_ns for p in stamps} == stamps
    assert again["proxies"][3]["status"] == "ok"
    with pytest.raises(SlmError, match="other mixtures or target"):
        run_mix(load_config(None, [*over, "mix.seed=9"]), out)
    # a proxy that diverges is recorded with its reason and left out of the fit
    bad = load_config(None, [*tiny(corpus, tmp_path, "train.lr=1e9", "train.grad_clip=0"), "data.mixture={news = 1.0}"])
    from slm.sweep.runs import train_all

    logs.clear()
    train_all([(bad.model_dump_json(), tmp_path / "diverged")], ["proxy diverged"], "", 1, 1, None, None, logs.append)
    assert "loss is" in json.loads((tmp_path / "diverged" / "failed.json").read_text())["reason"]
    assert any("proxy diverged diverged: TrainingDiverged: loss is" in m for m in logs)


def test_bad_mix_input(corpus, tmp_path):
    with pytest.raises(SlmError, match=r"no \[mix\] table"):
        run_mix(load_config(None, tiny(corpus, tmp_path)), tmp_path / "a")
    with pytest.raises(SlmError, match=r"mix\.target is empty"):
        run_mix(load_config(None, tiny(corpus, tmp_path, "mix.proxies=8")), tmp_path / "a")
    with pytest.raises(SlmError, match="unknown domain"):
        run_mix(load_config(None, tiny(corpus, tmp_path, "mix.target={poetry = 1.0}")), tmp_path / "b")
    with pytest.raises(SlmError, match="too few: the regression needs at least 6"):
        run_mix(load_config(None, tiny(corpus, tmp_path, "mix.target={books = 1.0}", "mix.proxies=3")), tmp_path / "c")


def test_validate_at_a_larger_scale_reports_decision_accuracy(corpus, tmp_path):
    from slm.mix.validate import decision_accuracy, validate_sweep

    assert decision_accuracy([1, 2, 3], [10, 20, 30]) == (1.0, 3)
    assert decision_accuracy([1, 2, 3], [30, 20, 10]) == (0.0, 3)
    over = tiny(corpus, tmp_path, "mix.proxies=6", "mix.jobs=1", "mix.target={books = 1.0}", "mix.search_samples=500")
    run_mix(load_config(None, over), tmp_path / "sweep", log=lambda m: None)
    out = validate_sweep(tmp_path / "sweep", ["model.d_model=32", "train.max_steps=8"], n_proxies=2)
    names = [r["mixture"] for r in out["mixtures"]]
    assert names[:3] == ["chosen", "natural", "uniform"] and len(names) == 5
    assert all(r["proxy_scale"] is not None and r["target_scale"] is not None for r in out["mixtures"])
    assert out["pairs"] == 10 and 0.0 <= out["decision_accuracy"] <= 1.0
    assert "d_model = 32" in (tmp_path / "sweep" / "validate" / "large" / "chosen" / "config.toml").read_text()
    assert "d_model = 16" in (tmp_path / "sweep" / "validate" / "small" / "chosen" / "config.toml").read_text()
    with pytest.raises(SlmError, match="not a finished mixture sweep"):
        validate_sweep(tmp_path / "nothing", [])


def crash_or_succeed(folder: str, threads: int) -> dict:
    """A job for the executor: the folder named 'dies' kills its process outright, 'raises' raises."""
    import os
    import time

    if folder.endswith("dies"):
        os._exit(3)
    if folder.endswith("raises"):
        raise ValueError("bad input")
    time.sleep(0.5)  # still running when the other worker dies, with jobs left in the queue
    return {"folder": folder, "threads": int(os.environ["OMP_NUM_THREADS"])}


def test_a_dead_worker_is_recorded_and_the_other_jobs_finish(tmp_path):
    import threading

    from slm.executor import DIED, run_jobs

    # the death comes while jobs still wait in the queue: they must run after the retry, not hang
    names = ["a", "dies", "b", "raises", "c", "d", "done"]
    results: dict[int, object] = {}
    jobs = [(str(tmp_path / n), 1) for n in names]
    args = (crash_or_succeed, jobs, 2, results.__setitem__, lambda i: names[i] == "done")
    worker = threading.Thread(target=run_jobs, args=args, kwargs={"threads": 1}, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the executor hung after a worker died"
    assert sorted(results) == list(range(7))  # every job reported exactly once
    assert not results[1].ok and results[1].reason == DIED
    assert not results[3].ok and results[3].reason == "ValueError: bad input" and "Traceback" in results[3].trace
    assert results[6].ok and results[6].skipped  # its finished marker existed: not run again
    for i in (0, 2, 4, 5):
        assert results[i].ok and results[i].value == {"folder": str(tmp_path / names[i]), "threads": 1}


def test_a_sweep_on_ray_gives_the_same_proxies_as_local_processes(corpus, tmp_path):
    pytest.importorskip("ray")  # the cluster extra; installed by `make test`
    import ray

    over = tiny(corpus, tmp_path, "mix.proxies=6", "mix.target={books = 1.0}", "mix.search_samples=500")
    local = run_mix(load_config(None, [*over, "mix.jobs=2"]), tmp_path / "local", log=lambda m: None)
    try:
        on_ray = run_mix(load_config(None, [*over, "mix.ray_address='local'"]), tmp_path / "ray", log=lambda m: None)
    finally:
        ray.shutdown()
    assert [p["status"] for p in on_ray["proxies"]] == ["ok"] * 6
    assert [p["target"] for p in on_ray["proxies"]] == [p["target"] for p in local["proxies"]]
    assert on_ray["chosen"] == local["chosen"]


def test_a_task_as_the_target(corpus, tmp_path):
    from slm.eval.cloze import make_cloze_task

    make_cloze_task(corpus, tmp_path / "next.yaml", per_domain=8)
    over = tiny(corpus, tmp_path, "mix.proxies=6", "mix.jobs=1", "mix.search_samples=500", "model.max_seq_len=128")
    cfg = load_config(None, [*over, f"mix.target_task='{tmp_path / 'next.yaml'}'"])
    out = tmp_path / "sweep"
    first = run_mix(cfg, out, log=lambda m: None)
    assert first["target_task"] == str(tmp_path / "next.yaml") and first["target"] == {}
    for p in first["proxies"]:
        assert p["status"] == "ok" and p["target"] == p["task"]["answer_bpb"] > 0 and p["task"]["n"] > 0
    # killed after training but before the task was scored: the rerun scores it, and trains nothing again
    victim = out / "proxies" / "p002" / "summary.json"
    victim.write_text(json.dumps({k: v for k, v in json.loads(victim.read_text()).items() if k != "task"}))
    again = run_mix(cfg, out, log=lambda m: None)
    assert again["proxies"][2]["target"] == pytest.approx(first["proxies"][2]["target"], rel=1e-6)
    with pytest.raises(SlmError, match="not both"):
        run_mix(
            load_config(None, [*over, "mix.target={books = 1.0}", f"mix.target_task='{tmp_path / 'next.yaml'}'"]), out
        )
