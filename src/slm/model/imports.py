"""`slm import`: bring a transformers Llama/Qwen3 folder or a GGUF file into an slm run folder; and the same
once, inside a run, for a model a run starts from or learns from (train.init, distill.teacher).

The source is read by the one loader (model/load.py). The run holds the weights as checkpoint step 0, in
the precision the source stored them (quantised GGUF tensors as bfloat16: a 98 MB Q4_1 file becomes about
270 MB, not a 538 MB float32 copy), plus the model's own tokenizer and chat template, so it can be
evaluated, generated from, exported again or used as a teacher like any model slm trained.
"""

from __future__ import annotations

import json
from pathlib import Path

from slm.config import config_to_toml
from slm.errors import SlmError
from slm.model.io import WEIGHTS, is_run, save_weights
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


def import_once(source: str | Path, dest: Path, what: str) -> Path:
    """`source` as an slm run folder: itself when it is one, else imported into `dest` the first time (a
    resumed run, or another process of the same run, finds it there)."""
    if not str(source).startswith("package:"):
        src = Path(source)
        if is_run(src):
            return src
        if not src.exists():
            raise SlmError(
                f"{what} {src} not found; give an slm run, a transformers folder, a .gguf file or package:NAME"
            )
    if not (dest / "config.toml").is_file():
        try:
            import_model(source, dest, force=True)
        except SlmError as e:
            raise SlmError(f"{what} cannot be loaded: {e}") from None
    return dest
