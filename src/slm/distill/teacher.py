"""Teachers: any model the loader reads, kept as a run folder; and a student initialised from one by keeping
a subset of its layers and the leading slice of every weight."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from tokenizers import Tokenizer

from slm.errors import SlmError
from slm.model.imports import import_once
from slm.model.io import WEIGHTS, resolve_checkpoint
from slm.model.load import load_model
from slm.model.transformer import Transformer


def teacher_run(source: str | Path, workdir: Path) -> Path:
    """The teacher as an slm run folder: itself, or anything else the loader takes (a transformers folder,
    a GGUF file, package:NAME) imported once into `workdir/teacher`."""
    return import_once(source, workdir / "teacher", "teacher")


def load_teacher(run_path: Path, device: torch.device) -> tuple[Transformer, Tokenizer]:
    loaded = load_model(run_path, device=device)
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    return loaded.model, loaded.tokenizer


def weights_hash(run_path: Path) -> str:
    """Identifies the teacher by the bytes of its weights (a cache made by one teacher is refused for another)."""
    _, ckpt = resolve_checkpoint(run_path)
    h = hashlib.blake2b(digest_size=8)
    with (ckpt / WEIGHTS).open("rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def default_layers(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spaced, always keeping the first and the last layer."""
    if n_student == 1:
        return [0]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def init_from_teacher(student: Transformer, teacher: Transformer, layers: list[int] | None = None) -> list[int]:
    """Copy teacher weights into the student: student layer i takes teacher layer layers[i], and every tensor
    takes the leading slice of the teacher's (first heads, first hidden units, first embedding dims)."""
    sc, tc = student.cfg, teacher.cfg
    layers = layers or default_layers(tc.n_layer, sc.n_layer)
    if len(layers) != sc.n_layer or not all(0 <= i < tc.n_layer for i in layers):
        raise SlmError(f"distill.init_layers={layers}: need {sc.n_layer} indices of teacher layers 0..{tc.n_layer - 1}")
    if sc.head_dim != tc.head_dim or student.vocab_size != teacher.vocab_size:
        raise SlmError(
            f"cannot initialise from the teacher: head size {sc.head_dim} vs {tc.head_dim} and vocabulary "
            f"{student.vocab_size} vs {teacher.vocab_size} must match; use distill.init = 'scratch'"
        )
    t_state = teacher.state_dict()
    with torch.no_grad():
        for name, p in student.state_dict().items():
            src_name = name
            if name.startswith("layers."):
                i, rest = name.split(".", 2)[1:]
                src_name = f"layers.{layers[int(i)]}.{rest}"
            src = t_state.get(src_name)
            if src is None or src.dim() != p.dim() or any(a > b for a, b in zip(p.shape, src.shape, strict=True)):
                raise SlmError(
                    f"cannot initialise {name} {tuple(p.shape)} from the teacher's {src_name}; "
                    "the student must be no wider than the teacher"
                )
            p.copy_(src[tuple(slice(0, s) for s in p.shape)])
    return layers
