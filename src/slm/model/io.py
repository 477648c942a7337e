"""Model weights on disk (safetensors) and loading a model from a run folder or checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from slm.config import Config
from slm.errors import SlmError
from slm.model.transformer import Transformer
from slm.run import Run
from slm.tokenizer import load_tokenizer

WEIGHTS = "model.safetensors"


def weights_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """State dict without the tied lm_head alias (safetensors stores each tensor once)."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def save_weights(model: Transformer, path: Path) -> None:
    save_file(weights_dict(model), str(path), metadata={"format": "pt", "slm": "1"})


def load_weights(model: Transformer, path: Path) -> None:
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise SlmError(f"{path}: cannot read weights ({e}); the file is corrupt or incomplete") from None
    if model.cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise SlmError(f"{path}: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")


def is_run(path: Path) -> bool:
    """An slm run folder or one of its checkpoints (as opposed to a transformers folder or a GGUF file)."""
    return (path / "config.toml").is_file() or (path / "meta.json").is_file()


def resolve_checkpoint(path: str | Path) -> tuple[Run, Path]:
    """A run folder (its newest checkpoint) or one checkpoint folder inside a run."""
    p = Path(path)
    if (p / WEIGHTS).is_file() and (p / "meta.json").is_file():
        return Run(p.parent.parent), p
    run = Run(p)
    if not p.is_dir():
        raise SlmError(f"{p} not found; pass a run folder (runs/NAME) or one of its checkpoints")
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        raise SlmError(f"{p} has no complete checkpoint; train it first (`slm train`) or resume it (`--resume`)")
    return run, ckpt


def load_model(path: str | Path, device: str = "cpu") -> tuple[Transformer, Tokenizer, Config, dict]:
    run, ckpt = resolve_checkpoint(path)
    cfg = run.load_config()
    meta = json.loads((ckpt / "meta.json").read_text())
    cfg.model.vocab_size = meta["vocab_size"]
    model = Transformer(cfg.model)
    load_weights(model, ckpt / WEIGHTS)
    tok = load_tokenizer(run.tokenizer_path)
    return model.to(device).eval(), tok, cfg, meta
