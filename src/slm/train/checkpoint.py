"""Training checkpoints: weights (safetensors) plus optimizer, RNG and data-position state.

Each checkpoint is written into a hidden temporary folder and renamed into place only when complete, so
a kill or a full disk mid-write leaves the previous checkpoint untouched and the run resumable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from slm.errors import SlmError
from slm.model.io import WEIGHTS, load_weights, save_weights
from slm.model.transformer import Transformer
from slm.run import Run, atomic_dir, atomic_write_text, read_json

STATE = "train_state.pt"


def save_checkpoint(
    run: Run, model: Transformer, optimizer: torch.optim.Optimizer, step: int, meta: dict[str, Any], keep: int
) -> Path:
    final = run.ckpt_dir / f"step_{step:07d}"
    with atomic_dir(final) as tmp:
        save_weights(model, tmp / WEIGHTS)
        state = {
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "step": step,
        }
        torch.save(state, tmp / STATE)
        (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2) + "\n")
    atomic_write_text(run.ckpt_dir / "LATEST", final.name + "\n")
    for old in run.checkpoints()[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_temporaries(run: Run) -> None:
    """Half-written checkpoint folders left by a kill (their names start with a dot) are never read again."""
    if run.ckpt_dir.is_dir():
        for tmp in run.ckpt_dir.glob(".step_*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)


def load_checkpoint(ckpt: Path, model: Transformer, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    load_weights(model, ckpt / WEIGHTS)
    try:
        # weights_only: a run folder is data, shared between people; unpickling it must never run code.
        state = torch.load(ckpt / STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling refusal, a truncated zip, an I/O error: all mean this file is unusable
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise SlmError(
            f"{ckpt / STATE} cannot be loaded safely ({first}); it is damaged or not written by slm: "
            "resume from an earlier checkpoint (remove this one) or start a new run"
        ) from None
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return read_json(ckpt / "meta.json", f"the checkpoint is damaged; remove {ckpt} to resume from the one before")
