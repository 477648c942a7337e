"""Starting a run from an existing model (train.init): continued pretraining, instruction tuning.

The source is anything the loader reads; it is imported once into RUN/init (an slm run is used in place).
The run takes the source's shape, tokenizer and chat template, and its first step starts from the source's
weights, so everything after (checkpoints, resume, export to transformers and GGUF) is a normal run.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from slm.config import Config, load_config
from slm.errors import SlmError
from slm.model.imports import import_once
from slm.model.io import WEIGHTS, load_weights, resolve_checkpoint
from slm.model.transformer import Transformer
from slm.run import Run


def adopt_init(cfg: Config, run: Run, say: Callable[[str], None]) -> Path:
    """Import the source once and make its shape, tokenizer and chat template the run's; returns its folder."""
    assert cfg.train.init
    src = import_once(cfg.train.init, run.path / "init", "train.init")
    icfg = load_config(src / "config.toml")
    if cfg.model != icfg.model:
        say(f"model shape from train.init ({icfg.model.n_layer} layers, d_model {icfg.model.d_model})")
    cfg.model = icfg.model.model_copy(deep=True)
    cfg.tokenizer.path = str(src / "tokenizer.json")
    cfg.tokenizer.vocab_size = icfg.tokenizer.vocab_size
    cfg.tokenizer.eos_token = icfg.tokenizer.eos_token
    if cfg.train.seq_len and cfg.train.seq_len > cfg.model.max_seq_len:
        raise SlmError(f"train.seq_len={cfg.train.seq_len} exceeds train.init's context of {cfg.model.max_seq_len}")
    template = src / "chat_template.jinja"
    if template.is_file() and not run.chat_template_path.is_file():
        run.path.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, run.chat_template_path)
    return src


def load_init_weights(model: Transformer, cfg: Config, run: Run) -> None:
    """The source's weights into a fresh run's model (before the optimiser sees them)."""
    assert cfg.train.init
    src = import_once(cfg.train.init, run.path / "init", "train.init")
    _, ckpt = resolve_checkpoint(src)
    load_weights(model, ckpt / WEIGHTS)
