"""Model weights on disk (safetensors) and the checkpoints of a run folder."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from slm.errors import SlmError
from slm.model.lora import has_lora, merged, to_adapted
from slm.model.lora import stored as lora_stored
from slm.model.transformer import Transformer
from slm.run import Run

WEIGHTS = "model.safetensors"


def weights_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """State dict without the tied lm_head alias (safetensors stores each tensor once); an adapted model's
    in the run folder's LoRA layout (model/lora.py)."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if has_lora(model):
        sd = lora_stored(sd, model.lora_scale)  # type: ignore[attr-defined]
    if model.cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def save_weights(weights: Transformer | dict[str, torch.Tensor], path: Path) -> None:
    """A model's weights, or a dict of tensors by slm name (any float dtype: imports keep the source's)."""
    tensors = weights if isinstance(weights, dict) else weights_dict(weights)
    save_file(tensors, str(path), metadata={"format": "pt", "slm": "1"})
    path.chmod(0o644)  # safetensors writes 0600; every other run file is readable by collaborators


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise SlmError(f"{path}: cannot read weights ({e}); the file is corrupt or incomplete") from None


def load_state(model: Transformer, sd: dict[str, torch.Tensor], source: str) -> None:
    """Copy tensors into the model (each cast to the parameter's dtype), refusing any that do not fit. Stored
    LoRA adapters go into an adapted model as they are, and are merged into the weights of any other."""
    sd = to_adapted(sd, model) if has_lora(model) else dict(merged(sd))
    if model.cfg.tie_embeddings and "embed_tokens.weight" in sd:
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    own = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items() if k in own and own[k].shape != v.shape
    ]
    if wrong:
        raise SlmError(
            f"{source}: weights do not fit the model's shape ({wrong[0]}{' and more' if len(wrong) > 1 else ''}); "
            "the config and the weights come from different models"
        )
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise SlmError(f"{source}: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_weights(model: Transformer, path: Path) -> None:
    load_state(model, read_weights(path), str(path))


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
