"""The seam between the loop and what a step computes: the LM objective is a plain training loop bit for bit,
a new objective (here a masked one, as SFT will be) needs no change to the loop, and each command keeps
to its own recipes and runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from slm.config import Config, load_config
from slm.data.batch import IGNORE, Batch
from slm.errors import SlmError
from slm.model.transformer import Transformer
from slm.run import Run
from slm.train.loop import make_optimizer, train
from slm.train.objective import Objective
from slm.train.schedule import lr_at
from slm.train.start import start

QUIET = Console(quiet=True)


def test_the_lm_objective_is_a_plain_training_loop_bit_for_bit(tiny_cfg: Config, tmp_path: Path):
    """Everything the loop adds (objective, batches, checkpoints, evaluation) changes no number: the losses
    equal those of a hand-written loop over the same batches with the same optimiser and schedule."""
    cfg = tiny_cfg.model_copy(deep=True)
    summary = train(cfg, Run(tmp_path / "run"), console=QUIET, progress=False)
    assert summary["steps"] == 12
    logged = [m["loss"] for m in Run(tmp_path / "run").metrics() if "loss" in m]

    from slm.data.shards import Shards

    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model, cfg.tokenizer.vocab_size)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    batcher = Shards.open(tmp_path / "run" / "data").batcher(cfg.seq_len, cfg.train.batch_size, cfg.train.seed)
    plain = []
    for step in range(cfg.train.max_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.train)
        b = batcher.batch(step, 0)
        _, loss = model(b.inputs, b.targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        plain.append(loss.item())
    assert logged == plain


class FirstHalfMasked(Objective):
    """A new objective, as SFT will be one: only the second half of every window takes loss."""

    name = "masked"

    def batch(self, step: int, index: int) -> Batch:
        b = self.env.batcher.batch(step, index)
        targets = b.targets.clone()
        targets[:, : targets.size(1) // 2] = IGNORE
        return Batch(b.inputs, targets)

    def end_step(self, step: int, loss: float) -> dict[str, float]:
        self.steps = getattr(self, "steps", 0) + 1
        return {"masked_steps": self.steps}

    def state(self) -> dict:
        return {"steps": self.steps}

    def load_state(self, state: dict) -> None:
        self.steps = state["steps"]


def test_a_new_objective_plugs_in_without_touching_the_loop(tiny_cfg: Config, tmp_path: Path):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.train.lr = 1e-9  # nearly frozen: step 1's loss is the initial model's masked loss
    objective = FirstHalfMasked(cfg)
    train(cfg, Run(tmp_path / "run"), objective, console=QUIET, progress=False)
    first = next(m for m in Run(tmp_path / "run").metrics() if "loss" in m)
    assert first["masked_steps"] == 1
    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model, cfg.tokenizer.vocab_size)
    b = objective.batch(0, 0)
    logits, _ = model(b.inputs)
    want = F.cross_entropy(logits.view(-1, logits.size(-1)), b.targets.reshape(-1), ignore_index=IGNORE)
    assert first["loss"] == pytest.approx(want.item(), rel=1e-5)
    unmasked = F.cross_entropy(logits.view(-1, logits.size(-1)), objective.env.batcher.batch(0, 0).targets.reshape(-1))
    assert abs(first["loss"] - unmasked.item()) > 1e-3  # the mask made a difference
    # its state rides in the checkpoint and comes back on resume
    meta = json.loads((Run(tmp_path / "run").latest_checkpoint() / "meta.json").read_text())
    assert meta["objective"] == "masked" and meta["objective_state"] == {"steps": 12}
    cfg.train.max_steps = 14
    again = FirstHalfMasked(cfg)
    train(cfg, Run(tmp_path / "run"), again, resume=True, console=QUIET, progress=False)
    assert again.steps == 14


def test_commands_keep_to_their_own_recipes_and_runs(tiny_cfg: Config, tmp_path: Path):
    run = tmp_path / "plain"
    start(tiny_cfg.model_copy(deep=True), run, console=QUIET)
    text = (run / "config.toml").read_text()
    assert "[distill]" not in text and "[mix]" not in text and "[train]" in text
    with_distill = load_config(None, [f"distill.teacher='{run}'"])
    with pytest.raises(SlmError, match=r"has a \[distill\] table: run it with `slm distill`"):
        start(with_distill, tmp_path / "x", console=QUIET, source="r.toml")
    with_mix = load_config(None, ["mix.target={a = 1.0}"])
    with pytest.raises(SlmError, match=r"has a \[mix\] table"):
        start(with_mix, tmp_path / "y", console=QUIET)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    # a run started by one objective is not resumed by another
    cfg = Run(run).load_config(["train.max_steps=14"])
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    with pytest.raises(SlmError, match="trained with the lm objective"):
        train(cfg, Run(run), FirstHalfMasked(cfg), resume=True, console=QUIET, progress=False)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before  # nothing written
