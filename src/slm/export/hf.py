"""Export to a Hugging Face `transformers` folder (Llama, or Qwen3 when QK-norm is on).

The names and config fields live in model/hf.py, shared with the loader that reads such folders back.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from slm.model.hf import hf_config, slm_to_hf_name
from slm.model.load import load_model
from slm.run import atomic_dir, refuse_existing


def export_hf(src: str | Path, out: str | Path, force: bool = False) -> Path:
    out = Path(out)
    refuse_existing(out, force)
    loaded = load_model(src)
    model, tok, cfg = loaded.model, loaded.tokenizer, loaded.config
    eos = loaded.eos_id
    sd = {slm_to_hf_name(k): v.detach().contiguous() for k, v in model.state_dict().items()}
    if cfg.model.tie_embeddings:
        sd.pop("lm_head.weight")
    eos_text = tok.id_to_token(eos)
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eos_text,
        "bos_token": eos_text,
        "unk_token": None,
        "model_max_length": cfg.model.max_seq_len,
        "clean_up_tokenization_spaces": False,
    }
    if loaded.chat_template:
        tok_cfg["chat_template"] = loaded.chat_template
    with atomic_dir(out) as tmp:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg.model, model.vocab_size, eos), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(
            json.dumps({"bos_token_id": eos, "eos_token_id": eos, "do_sample": False}, indent=2) + "\n"
        )
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    return out
