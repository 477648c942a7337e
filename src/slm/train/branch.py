"""`slm train --resume RUN --decay-at STEP --out NEW`: MiniCPM's anytime property of warmup-stable-decay.

A WSD run holds its peak learning rate until the decay, so any checkpoint of its stable phase can be
decayed into a finished model. The branch starts from RUN's checkpoint at STEP and decays over the share
of steps a run of that length would have spent decaying (train.decay_fraction), so the branch is the run
that RUN would have been had it been planned to end there. NEW is an ordinary run folder: the source's
metrics up to STEP are copied, so its loss curve reads from the start, and its report overlays with RUN's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from slm.config import Config
from slm.errors import SlmError
from slm.run import Run, atomic_write_text
from slm.train.schedule import wsd_decay_start


def branch_decay(source: Path, step: int, out: Path, sets: list[str] | None = None) -> Config:
    src = Run(source)
    cfg = src.load_config(sets)
    t = cfg.train
    if t.schedule != "wsd":
        raise SlmError(
            f"{source} uses the {t.schedule} schedule; --decay-at branches a warmup-stable-decay run "
            "(train.schedule = 'wsd'), whose learning rate is flat until its decay"
        )
    if t.decay_fraction >= 1.0:
        raise SlmError(f"{source} decays over all its steps (train.decay_fraction = 1): there is no stable phase")
    ckpt = src.ckpt_dir / f"step_{step:07d}"
    if not (ckpt / "meta.json").exists():
        have = ", ".join(str(int(p.name.split("_")[1])) for p in src.checkpoints()) or "none"
        raise SlmError(
            f"{source} has no checkpoint at step {step} (it has: {have}); train it with train.ckpt_every and "
            "train.keep_checkpoints that keep the steps you want to branch from"
        )
    own = wsd_decay_start(t)
    if step > own:
        raise SlmError(f"step {step} of {source} is inside its decay (from step {own}); branch from the stable phase")
    if Run(out).latest_checkpoint() is not None or (out / "config.toml").exists():
        raise SlmError(f"{out} already holds a run; choose another --out")
    t.decay_start = step
    t.max_steps = step + max(1, round(t.decay_fraction * step / (1.0 - t.decay_fraction)))
    t.ckpt_every = min(t.ckpt_every, t.max_steps - step)
    if not cfg.data.shards and (src.data_dir / "manifest.json").exists():
        cfg.data.shards = str(src.data_dir.resolve())  # the same tokens, read where the source made them
    cfg.name = out.name
    new = Run(out)
    new.path.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "chat_template.jinja"):
        if (src.path / name).exists():
            shutil.copy2(src.path / name, new.path / name)
    new.ckpt_dir.mkdir(exist_ok=True)
    shutil.copytree(ckpt, new.ckpt_dir / ckpt.name)
    atomic_write_text(new.ckpt_dir / "LATEST", ckpt.name + "\n")
    if src.metrics_path.exists():
        shutil.copy2(src.metrics_path, new.metrics_path)  # the loop keeps the records up to STEP
    new.save_config(cfg)
    return cfg
