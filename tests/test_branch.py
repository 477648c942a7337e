"""slm train --decay-at: a WSD run's stable-phase checkpoint decayed in a new run folder is the run that
would have been trained had it been planned to end there (the anytime property of MiniCPM's WSD)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from slm.config import load_config
from slm.errors import SlmError
from slm.run import Run
from slm.train.branch import branch_decay
from slm.train.loop import train
from slm.train.schedule import lr_at

from .conftest import tiny_overrides


def test_a_branch_equals_the_run_planned_to_end_there(corpus, tmp_path: Path):
    over = [*tiny_overrides(corpus, tmp_path / "runs"), "train.schedule='wsd'", "train.max_steps=12"]
    over += ["train.ckpt_every=3", "train.keep_checkpoints=10", "sample.prompts=[]", "train.eval_every=100"]
    quiet = Console(quiet=True)
    train(load_config(None, over), Run(tmp_path / "long"), console=quiet, progress=False)
    cfg = branch_decay(tmp_path / "long", 6, tmp_path / "at6")
    # decay_fraction 0.2 of a run ending at 8 is 2 steps (round(0.2 * 6 / 0.8)), starting at step 6
    assert (cfg.train.max_steps, cfg.train.decay_start) == (8, 6)
    branch = train(cfg, Run(tmp_path / "at6"), resume=True, console=quiet, progress=False)
    # the same schedule planned from the start, trained from scratch
    planned = load_config(None, [*over, "train.max_steps=8", "train.decay_start=6"])
    fresh = train(planned, Run(tmp_path / "fresh"), console=quiet, progress=False)
    assert branch["val_loss"] == pytest.approx(fresh["val_loss"], abs=1e-6)
    lrs = [m["lr"] for m in Run(tmp_path / "at6").metrics() if "lr" in m]
    assert len(lrs) == 8  # the source's first 6 steps, then the branch's 2
    assert lrs[:6] == [m["lr"] for m in Run(tmp_path / "long").metrics() if "lr" in m][:6]
    assert lrs[-1] == pytest.approx(cfg.train.lr * cfg.train.min_lr_ratio) and lrs[5] == cfg.train.lr
    assert lr_at(7, cfg.train) < lr_at(6, cfg.train) == lr_at(5, cfg.train) == cfg.train.lr  # decay: 6 to 7
    assert json.loads((tmp_path / "at6" / "summary.json").read_text())["steps"] == 8
    # bad branches, each one line naming what to change
    with pytest.raises(SlmError, match=r"no checkpoint at step 5 \(it has: 3, 6, 9, 12\)"):
        branch_decay(tmp_path / "long", 5, tmp_path / "x")
    with pytest.raises(SlmError, match="inside its decay"):
        branch_decay(tmp_path / "long", 12, tmp_path / "x")
    with pytest.raises(SlmError, match="already holds a run"):
        branch_decay(tmp_path / "long", 6, tmp_path / "at6")
    with pytest.raises(SlmError, match="uses the cosine schedule"):
        branch_decay(tmp_path / "long", 6, tmp_path / "x", ["train.schedule='cosine'"])
