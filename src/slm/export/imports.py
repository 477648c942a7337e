"""`slm import`: bring a transformers Llama/Qwen3 folder or a GGUF file into an slm run folder.

The source is read by the one loader (model/load.py). The run holds the weights as checkpoint step 0, in
the precision the source stored them (quantised GGUF tensors as bfloat16: a 98 MB Q4_1 file becomes about
270 MB, not a 538 MB float32 copy), plus the model's own tokenizer and chat template, so it can be
evaluated, generated from, exported again or used as a teacher like any model slm trained.
"""

from __future__ import annotations

import json
from pathlib import Path

from slm.config import config_to_toml
from slm.model.io import WEIGHTS, save_weights
from slm.model.load import read_source, source_summary
from slm.run import atomic_dir, refuse_existing
from slm.tokenizer import tokenizer_hash


def import_model(src: str | Path, out: str | Path, force: bool = False) -> Path:
    """`src` is anything the loader takes (a run is copied as its latest checkpoint)."""
    out = Path(out)
    refuse_existing(out, force)
    source = read_source(src)
    cfg = source.config.model_copy(deep=True)
    cfg.name = out.name
    with atomic_dir(out) as tmp:
        (tmp / "config.toml").write_text(config_to_toml(cfg))
        source.tokenizer.save(str(tmp / "tokenizer.json"))
        if source.chat_template:
            (tmp / "chat_template.jinja").write_text(source.chat_template, encoding="utf-8")
        ck = tmp / "checkpoints" / "step_0000000"
        ck.mkdir(parents=True)
        state = source.stored_state()
        if cfg.model.tie_embeddings:
            state.pop("lm_head.weight", None)
        save_weights(state, ck / WEIGHTS)
        meta = {
            "step": 0,
            "tokens_seen": 0,
            "vocab_size": source.vocab_size,
            "tokenizer_hash": tokenizer_hash(source.tokenizer),
            **source_summary(source, state),
        }
        (ck / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "checkpoints" / "LATEST").write_text("step_0000000\n")
    return out
