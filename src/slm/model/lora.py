"""LoRA adapters on slm's model, made by peft.

peft's `inject_adapter_in_model` fits slm's model as it is (plain torch modules whose projections are
`nn.Linear` named as in transformers' Llama: q_proj ... down_proj), so the low-rank layers, their
initialisation, scaling and dropout are peft's. What is written here is only what peft cannot know about
slm: how a run folder stores an adapted model, and how a stored adapter becomes a merged model or a PEFT
adapter folder for slm's transformers export.

Storage: a checkpoint's model.safetensors holds the base weights under their usual names, each adapter as
`<module>.lora_A.weight` / `<module>.lora_B.weight`, and `lora_scale` (alpha / rank). Any loader that reads
such a file without adapters gets the merged model W + scale * B @ A, so generate, eval and export see
the tuned model; a resumed run gets base and adapters back apart.
"""

from __future__ import annotations

import hashlib

import torch

from slm.errors import SlmError
from slm.model.transformer import Transformer

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCALE = "lora_scale"


def add_lora(model: Transformer, rank: int, alpha: float, dropout: float, targets: list[str]) -> list[str]:
    """Adapters on every Linear whose name ends in one of `targets`; every other weight frozen. Returns the
    adapted module names."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise SlmError("LoRA needs peft: pip install 'slm[tune]'") from None

    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    hits = [n for n in linear if n.split(".")[-1] in targets]
    if not hits:
        names = sorted({n.split(".")[-1] for n in linear})
        raise SlmError(f"lora.targets {targets} match no layer of the model; its linear layers are {', '.join(names)}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=sorted(set(targets)))
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    model.lora_scale = alpha / rank  # type: ignore[attr-defined]
    return hits


def has_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "lora_scale")


def stored(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """An adapted model's state dict (peft's names) in the run folder's names."""
    renames = ((".base_layer.", "."), (".lora_A.default.", ".lora_A."), (".lora_B.default.", ".lora_B."))
    out = {}
    for k, v in state.items():
        for peft_name, ours in renames:
            k = k.replace(peft_name, ours)
        out[k] = v
    out[SCALE] = torch.tensor(scale, dtype=torch.float32)
    return out


def to_adapted(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Stored tensors in an adapted model's names (peft's), for a resume."""
    own = set(model.state_dict())
    out = {}
    for k, v in sd.items():
        if k == SCALE:
            continue
        if ".lora_A." in k or ".lora_B." in k:
            k = k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
        elif k not in own and k.replace(".weight", ".base_layer.weight") in own:
            k = k.replace(".weight", ".base_layer.weight")
        out[k] = v
    return out


def merged(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stored tensors with every adapter folded into its base weight: W + scale * B @ A."""
    if SCALE not in sd:
        return sd
    base = {k: v for k, v in sd.items() if k != SCALE and ".lora_" not in k}
    pairs = {
        f"{k[: -len('.lora_A.weight')]}.weight": (sd[k], sd[k.replace(".lora_A.", ".lora_B.")])
        for k in sd
        if k.endswith(".lora_A.weight")
    }
    return fold(base, pairs, float(sd[SCALE]))


def is_adapter(sd: dict[str, torch.Tensor]) -> bool:
    return SCALE in sd


def base_hash(state: dict[str, torch.Tensor]) -> str:
    """A fingerprint of a base model's weights that an adapter records and checks on load: every tensor but
    adapters and the output head (tied or not), by name, as float16, so a base read from its GGUF, its slm
    import or a LoRA run's frozen copy gives the same value."""
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(state):
        if ".lora_" in k or k in (SCALE, "lm_head.weight"):
            continue
        h.update(k.encode())
        h.update(state[k].detach().to(torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()


def fold(state: dict[str, torch.Tensor], adapters: dict[str, tuple[torch.Tensor, torch.Tensor]], scale: float):
    """Base weights with adapters folded in: W + scale * B @ A for each (A, B) under its weight's name."""
    out = dict(state)
    for name, (a, b) in adapters.items():
        w = out[name]
        if (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise SlmError(f"the adapter for {name} is {b.shape[0]}x{a.shape[1]}; the base weight is {tuple(w.shape)}")
        out[name] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
    return out
