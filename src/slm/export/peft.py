"""Export a LoRA run's adapters as a PEFT adapter folder, for the transformers export of the model the run
started from:

    slm export runs/lora --format peft --out adapter/
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_export), "adapter/")

The names are transformers' (model/hf.py) under PEFT's `base_model.model.` prefix; the config is PEFT's
LoraConfig as JSON. The merged model is what `--format hf` and `--format gguf` write. slm's loader reads the
folder back onto its base (`slm generate adapter/`), and refuses a base whose weights hash differs.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from slm.errors import SlmError
from slm.model.hf import slm_to_hf_name
from slm.model.io import WEIGHTS, read_weights, resolve_checkpoint
from slm.model.lora import SCALE, base_hash, is_adapter
from slm.run import atomic_dir, refuse_existing


def export_peft(src: str | Path, out: str | Path, force: bool = False) -> Path:
    out = Path(out)
    refuse_existing(out, force)
    run, ckpt = resolve_checkpoint(src)
    sd = read_weights(ckpt / WEIGHTS)
    if not is_adapter(sd):
        raise SlmError(f"{src} holds no LoRA adapters (train with a [lora] table); export the model with --format hf")
    cfg = run.load_config([])
    tensors, targets = {}, set()
    for k, v in sd.items():
        if ".lora_A." in k or ".lora_B." in k:
            base, which = k.split(".lora_", 1)  # layers.0.attn.q_proj, A.weight
            hf_base = slm_to_hf_name(f"{base}.weight").removesuffix(".weight")
            tensors[f"base_model.model.{hf_base}.lora_{which}"] = v.contiguous()
            targets.add(base.rsplit(".", 1)[-1])
    rank = next(v.shape[0] for k, v in sd.items() if k.endswith(".lora_A.weight"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": cfg.train.init,
        "r": rank,
        "lora_alpha": float(sd[SCALE]) * rank,
        "lora_dropout": cfg.lora.dropout if cfg.lora else 0.0,
        "target_modules": sorted(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
        "use_rslora": False,
        "init_lora_weights": True,
    }
    with atomic_dir(out) as tmp:
        # The base's fingerprint travels with the adapter: slm refuses to load it onto another base.
        meta = {"format": "pt", "slm_base_hash": base_hash(sd)}
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata=meta)
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
